"""`ina bench --compile` raises dynamo's recompilation limit for its run only, and gives the old one back."""

from __future__ import annotations

import pytest
import torch._dynamo as dynamo

from ina.bench.settings import BenchSettings
from ina.bench.training import run_bench
from ina.bench.variants import RECOMPILE_LIMIT

TINY = {"preset": "tiny", "batch": 1, "seq": 8, "steps": 1, "warmup": 0, "variants": ["lora"]}


class _Stop(Exception):
    """Ends the run from its first log line, as a Ctrl-C would."""


def test_compile_limit_is_raised_for_the_run_and_restored_when_it_ends_early() -> None:
    """Fast: the run stops at its first log line (after the model is compiled, before a step runs)."""
    seen: list[int] = []

    def log(line: str) -> None:
        seen.append(dynamo.config.cache_size_limit)
        raise _Stop

    with dynamo.config.patch(cache_size_limit=3):  # a user's own setting, below the bench's
        with pytest.raises(_Stop):
            run_bench(BenchSettings(**TINY, compile=True), log)
        assert seen == [RECOMPILE_LIMIT]
        assert dynamo.config.cache_size_limit == 3
        with pytest.raises(_Stop):
            run_bench(BenchSettings(**TINY), log)  # eager: the limit untouched
        assert seen == [RECOMPILE_LIMIT, 3]


@pytest.mark.slow
def test_a_compiled_run_leaves_the_limit_as_it_found_it() -> None:
    """The whole compiled run (about a minute on 2 CPU cores: inductor compiles the tiny model)."""
    before = dynamo.config.cache_size_limit
    report = run_bench(BenchSettings(**TINY, compile=True))
    assert report["variants"]["lora"]["step_ms"]["n"] == 1
    assert dynamo.config.cache_size_limit == before
