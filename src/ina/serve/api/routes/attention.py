"""``POST /v1/attention``: head-averaged attention maps of one model on one text (the engine computes them)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from ina.serve.api import schemas
from ina.serve.api.deps import EngineDep

router = APIRouter()


@router.post("/v1/attention")
async def attention(body: schemas.AttentionRequest, engine: EngineDep) -> schemas.Attention:
    future = engine.attention(body.model, body.text, text_pair=body.text_pair, layers=body.layers)
    result = await asyncio.wrap_future(future)
    return schemas.Attention(model=body.model, **result)
