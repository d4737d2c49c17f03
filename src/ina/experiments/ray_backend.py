"""`ina sweep --backend ray`: the sweep's runs as Ray tasks, on a local instance or an existing cluster.

Each run is one Ray task holding the resources of ``--resources_per_run``; inside it the experiment runs
as its own process (``ina glue ...`` / ``ina squad ...``), so a crash fails that run only and a cancelled
task takes its process with it. A finished run's record comes back to the driver, which writes
``runs/NAME/result.json`` when the worker's disk is not the driver's, so resuming works on any cluster.
A failed run is retried ``--max_retries`` times, then stops the sweep (``--on_failure stop``) or is
reported and left out of the summaries (``--on_failure skip``); it is never silently dropped.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ina.experiments.backends import Job, Log, read_result, short
from ina.experiments.common import ExperimentError
from ina.foundation.files import read_json, write_json
from ina.foundation.harness import RESULT_FILE

#: Lines of a failed run's stderr kept in its error.
ERROR_TAIL = 20


class RunFailed(RuntimeError):
    """A run of the sweep exited with an error; ``str()`` names the run and ends with its last stderr lines."""


@dataclass(frozen=True)
class RaySettings:
    """Where and how the runs go: ``address`` ("" = a new local instance), per-run ``resources``."""

    address: str = ""
    resources: str = '{"cpu": 1}'
    max_retries: int = 0
    on_failure: str = "stop"

    def task_options(self) -> dict[str, Any]:
        """``resources`` (JSON, e.g. ``{"cpu": 1, "gpu": 1}``) as Ray task options."""
        flag = "--resources_per_run"
        try:
            declared = json.loads(self.resources)
        except json.JSONDecodeError:
            declared = None
        if not isinstance(declared, dict) or not declared:
            raise ExperimentError(
                f'{flag} must be a JSON object of resource amounts, e.g. \'{{"cpu": 1, "gpu": 1}}\'; '
                f"got {self.resources!r}"
            )
        options: dict[str, Any] = {"num_cpus": 0, "num_gpus": 0}
        custom: dict[str, float] = {}
        for key, amount in declared.items():
            if isinstance(amount, bool) or not isinstance(amount, int | float) or amount < 0:
                raise ExperimentError(
                    f"{flag}: {key!r} must be a non-negative number; got {amount!r} in {self.resources!r}"
                )
            name = key.lower()
            if name in ("cpu", "num_cpus"):
                options["num_cpus"] = amount
            elif name in ("gpu", "num_gpus"):
                options["num_gpus"] = amount
            elif name == "memory":
                options["memory"] = amount
            else:
                custom[key] = amount
        if custom:
            options["resources"] = custom
        return options


def check_settings(settings: RaySettings) -> None:
    """Every Ray flag's rule, before Ray starts or any run trains."""
    settings.task_options()
    if settings.max_retries < 0:
        raise ExperimentError(f"--max_retries must be 0 or more; got {settings.max_retries}")
    if settings.on_failure not in ("stop", "skip"):
        raise ExperimentError(f"--on_failure must be 'stop' or 'skip'; got {settings.on_failure!r}")
    try:
        import ray  # noqa: F401
    except ImportError as error:
        raise ExperimentError(
            "--backend ray needs Ray: pip install 'ina[scale]' (or leave out --backend for local runs)"
        ) from error


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the run's process gets SIGTERM when its Ray worker dies (a cancelled or killed task)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run_experiment(experiment: str, argv: list[str], folder: str) -> dict[str, Any]:
    """Run ``ina EXPERIMENT ARGV`` as a process (in a Ray worker); return its ``result.json`` record."""
    command = [sys.executable, "-c", "import sys; from ina_cli import main; sys.exit(main())"]
    preexec = _die_with_parent if sys.platform == "linux" else None
    process = subprocess.run(
        [*command, experiment, *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        preexec_fn=preexec,
    )
    if process.returncode != 0:
        tail = "\n".join(process.stderr.strip().splitlines()[-ERROR_TAIL:])
        raise RunFailed(f"exit code {process.returncode}:\n{tail}")
    return read_json(Path(folder) / RESULT_FILE)


@contextlib.contextmanager
def _ray(address: str) -> Iterator[Any]:
    """Ray, connected to ``address`` or to a new local instance (shut down afterwards if we started it)."""
    import ray

    started = not ray.is_initialized()
    if started:
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=os.cpu_count(), **kwargs)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def run_ray(
    jobs: list[Job], experiment: str, settings: RaySettings, log: Log
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Run the unfinished ``jobs`` as Ray tasks; return (records by job name, errors by job name).

    Finished jobs are read back, not rerun. The others go to the cluster at once and finish in any
    order, up to its capacity. ``Ctrl-C`` (or any error) cancels every run still on the cluster.
    """
    check_settings(settings)
    records: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    pending = []
    for job in jobs:
        record = read_result(job.folder)
        if record is None:
            pending.append(job)
        else:
            records[job.name] = record
            log(f"{job.name}: finished earlier, skipped")
    if not pending:
        return records, errors
    total = len(jobs)
    from ina.foundation.progress import progress, writing

    bar = progress(total=total, desc="sweep", unit="run", initial=len(records))

    def note(line: str) -> None:  # a log line that leaves a terminal's bar whole
        with writing():
            log(line)

    with bar, _ray(settings.address) as ray:
        task = ray.remote(run_experiment).options(
            **settings.task_options(), max_retries=0, retry_exceptions=False
        )
        attempts = {job.name: 0 for job in pending}
        started: dict[str, float] = {}
        refs: dict[Any, Job] = {}

        def submit(job: Job) -> None:
            started[job.name] = time.perf_counter()
            refs[task.remote(experiment, list(job.argv), str(job.folder))] = job

        for job in pending:
            submit(job)
        note(f"ray: {len(pending)} runs submitted, {settings.resources} each")
        try:
            while refs:
                done, _ = ray.wait(list(refs), num_returns=1)
                job = refs.pop(done[0])
                seconds = time.perf_counter() - started[job.name]
                try:
                    record = ray.get(done[0])
                except Exception as error:  # the run's own failure, or a lost worker
                    attempts[job.name] += 1
                    message = _cause(error)
                    if attempts[job.name] <= settings.max_retries:
                        note(f"{job.name}: failed ({message.splitlines()[0]}); retry {attempts[job.name]}")
                        submit(job)
                        continue
                    errors[job.name] = message
                    bar.update(1)
                    note(f"{job.name}: FAILED after {attempts[job.name]} attempt(s): {message}")
                    if settings.on_failure == "stop":
                        raise ExperimentError(
                            f"run {job.name} failed (its error is above); rerun the same command to "
                            "resume, or pass --on_failure skip to finish the other runs"
                        ) from None
                    continue
                if read_result(job.folder) is None:  # the worker's disk is not the driver's
                    write_json(job.folder / RESULT_FILE, record)
                records[job.name] = record
                bar.update(1)
                note(f"[{len(records)}/{total}] {job.name}: {short(record['metrics'])} ({seconds:.0f} s)")
        except BaseException:
            for ref in refs:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            raise
    return records, errors


def _cause(error: BaseException) -> str:
    """The run's own message out of Ray's wrapping."""
    cause = getattr(error, "cause", None)
    return str(cause if cause is not None else error).strip()
