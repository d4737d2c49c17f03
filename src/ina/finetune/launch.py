"""Whether the way `ina finetune` was launched fits this machine, checked before anything is loaded.

The example launch configurations (``examples/accelerate/*.yaml``) are written for GPU machines. On a
machine without a GPU, each of them would otherwise fail late with a framework traceback, or run
silently as something else; here they stop at once with one line naming the fix:

- bf16/fp16 mixed precision (``--bf16``, ``--fp16``, ``mixed_precision: bf16``) needs a GPU;
- more processes than CPU cores (``num_processes: 4`` on 2 cores) slow every step many times over;
- FSDP: accelerate enables it only on GPU-like devices, and on CPUs silently trains plain data-parallel;
- DeepSpeed runs on CPU processes (gloo; its shared-memory op is compiled on first use, which needs a
  C++ compiler): `uses_deepspeed` tells the Trainer not to make them accelerate "CPU" processes, which
  would silently turn DeepSpeed off;
- ``accelerate launch --cpu`` runs one process whatever ``num_processes`` says: said in a note.

This module imports no framework at import time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from ina.foundation.arguments import flag_value

TRUE = ("1", "true", "yes", "on", "t", "y")


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() in TRUE


def launch_problem(
    tokens: Sequence[str],
    config: str = "",
    env: Mapping[str, str] | None = None,
    cuda: bool = False,
    cores: int | None = None,
) -> str | None:
    """Why this launch cannot run well on a machine without a GPU, in one line (None when it can, or with ``cuda``)."""
    if cuda:
        return None
    env = os.environ if env is None else env
    problems = []
    source = f" (from --config {config})" if config else ""
    for flag in ("bf16", "fp16"):
        if _true(flag_value(tokens, flag)):
            problems.append(
                f"--{flag} true{source}: {flag} mixed precision needs a GPU and this machine has none; pass "
                f"--{flag} false to train in float32 on the CPU"
            )
    precision = env.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if precision in ("bf16", "fp16", "fp8"):
        problems.append(
            f"accelerate launch with mixed_precision {precision} (from its config file or flags) needs a GPU and "
            "this machine has none; add --mixed_precision no to the accelerate launch command"
        )
    if _true(env.get("ACCELERATE_USE_FSDP")) or flag_value(tokens, "fsdp"):
        problems.append(
            "FSDP needs GPUs: accelerate enables it only on GPU-like devices and on CPU processes would "
            "silently train plain data-parallel; on this machine launch without FSDP "
            "(examples/accelerate/ddp.yaml with --num_processes 2 --mixed_precision no, or torchrun)"
        )
    local = int(env.get("LOCAL_WORLD_SIZE", "1") or 1)
    cores = cores or usable_cores()
    if local > cores:
        problems.append(
            f"{local} processes were started on this machine, which has {cores} CPU core(s) and no GPU: they "
            f"would fight for the cores and each step would take many times longer; launch at most {cores} "
            f"(accelerate launch --num_processes {cores} ..., or torchrun --nproc_per_node {cores} ...)"
        )
    return "; ".join(problems) or None


def launch_note(env: Mapping[str, str] | None = None) -> str | None:
    """A line when ``accelerate launch --cpu`` ran this single process (whatever its config's num_processes)."""
    env = os.environ if env is None else env
    if _true(env.get("ACCELERATE_USE_CPU")) and int(env.get("WORLD_SIZE", "1") or 1) == 1:
        return (
            "note: accelerate launch --cpu starts one process, whatever num_processes says; for several CPU "
            "processes launch without --cpu and with --num_processes N --mixed_precision no (or torchrun)"
        )
    return None


def uses_deepspeed(tokens: Sequence[str], env: Mapping[str, str] | None = None) -> bool:
    """Whether this run trains under DeepSpeed (``accelerate launch`` with a DeepSpeed config, or ``--deepspeed``)."""
    env = os.environ if env is None else env
    return _true(env.get("ACCELERATE_USE_DEEPSPEED")) or bool(flag_value(tokens, "deepspeed"))


def stop_quietly(problem: str, env: Mapping[str, str] | None = None, wait_s: float = 30.0) -> str:
    """``problem`` for the first process of this machine; the others wait for the launcher to stop them.

    Every process of a launch finds the same problem; only local rank 0 reports it, so the user reads
    one line. The launcher (torchrun, accelerate) stops the other processes when rank 0 exits; if none
    does within ``wait_s``, they report it too.
    """
    import time

    env = os.environ if env is None else env
    if int(env.get("LOCAL_RANK", "0") or 0) != 0:
        time.sleep(wait_s)
    return problem


def checked_training_arguments(options: Any, tokens: Sequence[str], cuda: bool) -> tuple[Any, list[str]]:
    """The run's `TrainingArguments` and the notes to say at start, after refusing a launch that does not fit.

    ``options`` is the run's `FinetuneArguments`. Raises `FinetuneError` (one line) before any process
    group or model exists.
    """
    from ina.finetune.arguments import FinetuneError, batch_note, training_arguments

    problem = launch_problem(tokens, options.config, cuda=cuda)
    if problem:
        raise FinetuneError(stop_quietly(problem))
    args = training_arguments(options, list(tokens))
    split = (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.world_size)
    return args, [note for note in (launch_note(), batch_note(options, *split)) if note]
