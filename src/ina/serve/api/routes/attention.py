"""``POST /v1/attention``: head-averaged attention maps of one model on one text (the engine computes them)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from ina.serve.api import schemas
from ina.serve.api.deps import EngineDep, SettingsDep

router = APIRouter()


@router.post("/v1/attention")
async def attention(
    body: schemas.AttentionRequest, engine: EngineDep, settings: SettingsDep
) -> schemas.Attention:
    """Texts over ``--max_attention_tokens`` are refused: the answer holds layers × tokens² numbers."""
    future = engine.attention(
        body.model,
        body.text,
        text_pair=body.text_pair,
        layers=body.layers,
        max_tokens=settings.max_attention_tokens,
    )
    result = await asyncio.wrap_future(future)
    return schemas.Attention(model=body.model, **result)
