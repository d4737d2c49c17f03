"""``POST /v1/attention``: head-averaged attention maps of one model on one text (the engine computes them)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from ina.serve.api import responses, schemas
from ina.serve.api.bodies import OffLoopBody, off_loop
from ina.serve.api.deps import EngineDep, SettingsDep
from ina.serve.api.streaming import wait_for

router = APIRouter(route_class=OffLoopBody)


@router.post("/v1/attention", response_model=responses.Attention)
async def attention(
    body: schemas.AttentionRequest, request: Request, engine: EngineDep, settings: SettingsDep
) -> Response:
    """Texts over ``--max_attention_tokens`` are refused: the answer holds layers × tokens² numbers.

    The job waits in the engine's bounded queue (503 when full); a client that leaves first has its job
    cancelled before it runs. The answer (megabytes of numbers) is built as JSON off the event loop.
    """
    future = engine.attention(
        body.model,
        body.text,
        text_pair=body.text_pair,
        layers=body.layers,
        max_tokens=settings.max_attention_tokens,
    )
    result = await wait_for(future, request)
    return await off_loop(request, as_json, body.model, result)


def as_json(model: str, result: dict[str, Any]) -> Response:
    """The attention answer as a JSON response (validated against its schema)."""
    answer = responses.Attention(model=model, **result)
    return Response(answer.model_dump_json(), media_type="application/json")
