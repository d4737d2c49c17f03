"""vLLM's side of tests/integrations/test_vllm.py, run in .venv-vllm: one engine, every check, JSON out.

    .venv-vllm/bin/python tests/integrations/vllm_engine.py SPEC.json RESULT.json

SPEC: ``base``, ``adapters`` {name: folder}, ``max_lora_rank``, ``max_loras`` and ``batches``, each
``{"name", "requests": [{"adapter": name | null, "prompt": [ids], "max_tokens", "logprobs"}], "solo"?,
"expect_error"?}``. A batch runs as one ``generate`` call (``solo``: each request alone, one after
the other); greedy, ``ignore_eos``. RESULT: per batch, per request, the tokens and top log-probs (or
the error, for ``expect_error``), plus the engine's start time.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any


def _outputs(llm: Any, requests: list[dict], adapters: dict[str, Any]) -> list[dict]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    prompts = [TokensPrompt(prompt_token_ids=r["prompt"]) for r in requests]
    params = [
        SamplingParams(
            temperature=0.0, max_tokens=r["max_tokens"], ignore_eos=True, logprobs=r.get("logprobs", 5)
        )
        for r in requests
    ]
    loras = [adapters[r["adapter"]] if r["adapter"] else None for r in requests]
    results = llm.generate(prompts, params, lora_request=loras, use_tqdm=False)
    return [
        {
            "tokens": list(result.outputs[0].token_ids),
            "logprobs": [
                {str(k): v.logprob for k, v in step.items()} for step in result.outputs[0].logprobs or []
            ],
        }
        for result in results
    ]


def main(spec_file: str, out_file: str) -> None:
    with open(spec_file) as stream:
        spec = json.load(stream)
    from vllm import LLM
    from vllm.lora.request import LoRARequest

    adapters = {
        name: LoRARequest(name, k + 1, path) for k, (name, path) in enumerate(spec["adapters"].items())
    }
    started = time.perf_counter()
    llm = LLM(
        model=spec["base"],
        dtype="float32",
        enable_lora=True,
        max_lora_rank=spec["max_lora_rank"],
        max_loras=spec["max_loras"],
        max_cpu_loras=len(adapters) + 1,
        enforce_eager=True,
        max_model_len=spec.get("max_model_len", 256),
        max_num_seqs=spec.get("max_num_seqs", 128),
        seed=0,
    )
    result: dict[str, Any] = {"engine_start_s": time.perf_counter() - started, "batches": {}}
    for batch in spec["batches"]:
        started = time.perf_counter()
        if batch.get("expect_error"):
            try:
                _outputs(llm, batch["requests"], adapters)
                outcome: Any = {"error": None}
            except Exception as error:  # the refusal, as the caller of LLM.generate sees it
                outcome = {"error": f"{type(error).__name__}: {error}"}
        elif batch.get("solo"):
            outcome = [_outputs(llm, [request], adapters)[0] for request in batch["requests"]]
        else:
            outcome = _outputs(llm, batch["requests"], adapters)
        result["batches"][batch["name"]] = outcome
        result.setdefault("batch_s", {})[batch["name"]] = time.perf_counter() - started
    with open(out_file, "w") as stream:
        json.dump(result, stream)


if __name__ == "__main__":  # the engine runs in child processes that import this file
    main(*sys.argv[1:3])
