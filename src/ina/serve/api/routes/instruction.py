"""``POST /completion``: the seed's instruction route, in the adapter's prompt template."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ina.serve.api import responses, schemas
from ina.serve.api.bodies import OffLoopBody, off_loop
from ina.serve.api.deps import EngineDep, SettingsDep, max_tokens_of
from ina.serve.api.streaming import Run, finish_reason
from ina.serve.engine import Engine, SamplingParams

router = APIRouter(route_class=OffLoopBody)


@router.post("/completion")
async def instruction_completion(
    body: schemas.InstructionRequest, request: Request, engine: EngineDep, settings: SettingsDep
) -> responses.InstructionCompletion:
    model = body.model or (engine.adapters[0] if engine.adapters else engine.base_model_id)
    engine.resolve(model)
    param = "max_new_tokens" if body.max_new_tokens is not None else "max_tokens"
    max_tokens = max_tokens_of(settings, body.max_new_tokens or body.max_tokens, param)
    prompt_ids = await off_loop(request, encode, engine, model, body.instruction, body.input, max_tokens)
    params = SamplingParams(max_tokens, body.temperature, body.top_p, (), body.seed)
    run = Run(engine, model, [(prompt_ids, params)])
    texts, events = await run.collect(request)
    return responses.InstructionCompletion(
        id=responses.new_id("cmpl"),
        created=responses.now(),
        model=model,
        instruction=body.instruction,
        input=body.input,
        response=texts[0],
        finish_reason=finish_reason(events[0]),
        usage=run.usage(len(prompt_ids)),
    )


def encode(engine: Engine, model: str, instruction: str, input: str, max_tokens: int) -> list[int]:
    """The instruction prompt's token ids, if they fit the context (on a worker thread)."""
    prompt_ids = engine.encode_instruction(model, instruction, input)
    engine.check_length(prompt_ids, max_tokens, "instruction")
    return prompt_ids
