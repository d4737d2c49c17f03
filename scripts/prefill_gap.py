"""The longest pause a running stream sees while the engine takes a long prompt (issue 24, item 6).

One stream decodes on the embedded SmolLM2; once it has streamed ``--warmup`` tokens, a prompt of
``--prompt_tokens`` tokens is submitted. Printed (one JSON line per repeat): the longest gap between two
tokens of the stream while the long prompt is being taken, the median gap outside it, and how long the long
prompt waited for its first token. Run it against another checkout's engine with ``PYTHONPATH=that/src``:

    .venv/bin/python scripts/prefill_gap.py --prefill_chunk_tokens 256 --repeats 3
    PYTHONPATH=/tmp/old/src .venv/bin/python scripts/prefill_gap.py --repeats 3   # an engine without chunks
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import statistics
import threading
import time
from typing import Any


def one_repeat(
    engine: Any, stream_prompt: list[int], long_prompt: list[int], stream_params: dict[str, Any], warmup: int
) -> dict[str, Any]:
    """One stream, then the long prompt once the stream has sent ``warmup`` tokens: the gaps it saw."""
    from ina.serve.engine import SamplingParams

    times: list[float] = []
    warm, done = threading.Event(), threading.Event()
    first_long: list[float] = []

    def on_stream(event: object) -> None:
        times.append(time.perf_counter())
        if len(times) >= warmup:
            warm.set()
        if getattr(event, "finish_reason", None) is not None:
            done.set()

    def on_long(event: object) -> None:
        if not first_long:
            first_long.append(time.perf_counter())

    engine.submit(engine.base_model_id, stream_prompt, SamplingParams(**stream_params), on_stream, "stream")
    assert warm.wait(120), "the stream did not start"
    submitted = time.perf_counter()
    engine.submit(
        engine.base_model_id, long_prompt, SamplingParams(max_tokens=1, temperature=0), on_long, "long"
    )
    while not first_long:
        time.sleep(0.01)
    answered = first_long[0]
    assert done.wait(600)
    assert times[-1] > answered, "the stream ended before the long prompt was answered: raise --stream_tokens"
    gaps = list(itertools.pairwise(times))  # (start, end) between two stream events
    during = [end - start for start, end in gaps if end > submitted and start < answered]
    outside = [end - start for start, end in gaps if end <= submitted]
    return {
        "prompt_tokens": len(long_prompt),
        "longest_gap_s": round(max(during, default=answered - submitted), 3),
        "median_gap_outside_s": round(statistics.median(outside), 4),
        "long_prompt_first_token_s": round(answered - submitted, 3),
        "stream_tokens_while_prefilling": len(during),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt_tokens", type=int, default=3000)
    parser.add_argument("--prefill_chunk_tokens", type=int, default=None, help="absent: the engine's default")
    parser.add_argument("--stream_tokens", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (absent: torch's default)")
    args = parser.parse_args()

    import torch

    import ina
    from ina.embedded.smollm import ensure_model
    from ina.serve.engine import Engine, SamplingParams

    if args.threads:
        torch.set_num_threads(args.threads)
    kwargs: dict[str, Any] = {}
    if args.prefill_chunk_tokens is not None:
        kwargs["prefill_chunk_tokens"] = args.prefill_chunk_tokens
    engine = Engine.load(ensure_model(), dtype="float32", device="cpu", **kwargs)
    engine.start()
    chunked = "prefill_chunk_tokens" in inspect.signature(Engine.__init__).parameters
    stream_prompt = engine.encode_chat(
        engine.base_model_id, [{"role": "user", "content": "Count from 1 to 1000."}]
    )
    text = "The quick brown fox jumps over the lazy dog near the river bank. " * 400
    long_prompt = engine.encode_text(text)[: args.prompt_tokens]
    assert len(long_prompt) == args.prompt_tokens
    stream_params: dict[str, Any] = {"max_tokens": args.stream_tokens, "temperature": 0}
    if chunked:  # the stream must outlive the long prompt: no EOS
        stream_params["logit_bias"] = dict.fromkeys(engine.eos_ids, -100.0)
    engine.generate(
        engine.base_model_id, long_prompt[:64], SamplingParams(max_tokens=2, temperature=0)
    )  # warm

    for repeat in range(args.repeats):
        record = one_repeat(engine, stream_prompt, long_prompt, stream_params, args.warmup)
        record = {"engine": ina.__file__, "repeat": repeat, **record}
        record["prefill_chunk_tokens"] = engine.limits["prefill_chunk_tokens"] if chunked else None
        print(json.dumps(record), flush=True)
    engine.shutdown()


if __name__ == "__main__":
    main()
