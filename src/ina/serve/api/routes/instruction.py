"""``POST /completion`` (and ``/completion/``): the seed's instruction route, in the adapter's prompt template."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ina.serve.api import schemas
from ina.serve.api.deps import EngineDep, SettingsDep, max_tokens_of
from ina.serve.api.streaming import Run, finish_reason
from ina.serve.engine import SamplingParams

router = APIRouter()


@router.post("/completion")
@router.post("/completion/", include_in_schema=False)
async def instruction_completion(
    body: schemas.InstructionRequest, request: Request, engine: EngineDep, settings: SettingsDep
) -> schemas.InstructionCompletion:
    model = body.model or (engine.adapters[0] if engine.adapters else engine.base_model_id)
    engine.resolve(model)
    param = "max_new_tokens" if body.max_new_tokens is not None else "max_tokens"
    max_tokens = max_tokens_of(settings, body.max_new_tokens or body.max_tokens, param)
    prompt_ids = engine.encode_instruction(model, body.instruction, body.input)
    engine.check_length(prompt_ids, max_tokens, "instruction")
    params = SamplingParams(max_tokens, body.temperature, body.top_p, (), body.seed)
    run = Run(engine, model, [(prompt_ids, params)])
    texts, events = await run.collect(request)
    return schemas.InstructionCompletion(
        id=schemas.new_id("cmpl"),
        created=schemas.now(),
        model=model,
        instruction=body.instruction,
        input=body.input,
        response=texts[0],
        finish_reason=finish_reason(events[0]),
        usage=run.usage(len(prompt_ids)),
    )
