"""Where the runs of a sweep execute. Every backend takes the same jobs and returns the same records.

A `Job` is one run: its folder name, the experiment's own argument list and the folder whose
``result.json`` (written last and atomically by the experiment) marks it finished. A backend runs the
unfinished jobs and reads the finished ones back, so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ina.foundation.files import read_json
from ina.foundation.harness import RESULT_FILE

RunOne = Callable[[list[str]], dict[str, Any]]
Log = Callable[[str], None]


@dataclass(frozen=True)
class Job:
    """One run of a sweep."""

    name: str  # unique run folder name
    argv: list[str]  # the experiment's own argument list (as `ina glue` / `ina squad` parse it)
    folder: Path  # runs/<name>; result.json is written last and atomically there


def read_result(folder: Path) -> dict[str, Any] | None:
    """The run's record if it finished (``result.json`` readable), else ``None``."""
    try:
        return read_json(folder / RESULT_FILE)
    except (OSError, json.JSONDecodeError):
        return None


def run_local(jobs: list[Job], run_one: RunOne, log: Log) -> dict[str, dict[str, Any]]:
    """Run unfinished jobs in order (finished ones are read back and skipped); return records by job name.

    Progress over the runs (`ina.foundation.progress`: a bar on a terminal, periodic lines with an ETA in a
    log file) counts the finished runs as done before, so the ETA comes from the runs trained now.
    """
    from ina.foundation.progress import progress, writing

    earlier = {job.name: read_result(job.folder) for job in jobs}
    records: dict[str, dict[str, Any]] = {}
    done = sum(record is not None for record in earlier.values())
    with progress(total=len(jobs), desc="sweep", unit="run", initial=done) as bar:
        for index, job in enumerate(jobs, start=1):
            prefix = f"[{index}/{len(jobs)}] {job.name}"
            record = earlier[job.name]
            if record is not None:
                with writing():
                    log(f"{prefix}: finished earlier, skipped")
            else:
                with writing():
                    log(f"{prefix}: running")
                started = time.perf_counter()
                record = run_one(list(job.argv))
                with writing():
                    log(f"{prefix}: {short(record['metrics'])} ({time.perf_counter() - started:.0f} s)")
                bar.update(1)
            records[job.name] = record
    return records


def short(metrics: dict[str, float]) -> str:
    """``accuracy 0.81, f1 0.8``: a run's metrics on one log line."""
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
