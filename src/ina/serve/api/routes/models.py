"""``GET /health`` and ``GET /v1/models[/{id}]``: what this server serves."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ina.serve.api import responses
from ina.serve.api.deps import EngineDep, SettingsDep
from ina.serve.api.errors import model_not_found
from ina.serve.engine import Engine

router = APIRouter()


@router.get("/health")  # HEAD too (the Guard asks HEAD as GET)
async def health(engine: EngineDep, settings: SettingsDep) -> responses.Health:
    stats = engine.stats()
    return responses.Health(
        models=engine.model_ids,
        max_tokens_cap=settings.max_tokens_cap,
        active=stats["active_rows"],
        queued=stats["queued"],
        limits=engine.limits,
    )


@router.get("/v1/models")
async def list_models(engine: EngineDep, request: Request) -> responses.ModelList:
    return responses.ModelList(data=cards(engine, request.app.state.created))


@router.get("/v1/models/{model_id:path}")  # a base model id may hold a "/" (org/name)
async def get_model(
    model_id: str, engine: EngineDep, settings: SettingsDep, request: Request
) -> responses.ModelCard:
    for card in cards(engine, request.app.state.created):
        if card.id == model_id:
            return card
    raise model_not_found(model_id, engine.model_ids, settings.unserved.get(model_id))


def cards(engine: Engine, created: int) -> list[responses.ModelCard]:
    """The base model, then each adapter (its ``parent`` is the base)."""
    base = engine.base_model_id
    data = [responses.ModelCard(id=base, created=created, root=base, parent=None)]
    data += [
        responses.ModelCard(id=name, created=created, root=base, parent=base) for name in engine.adapters
    ]
    return data
