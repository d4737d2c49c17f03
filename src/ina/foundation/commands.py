"""Another `ina` command, run in a fresh process the way a user runs it (rooms never import each other).

    code = run_ina(["eval", "--adapter", "finetuned=outputs/run"])  # e.g. `ina finetune --eval`

The child process runs outside any distributed launch (torchrun's and accelerate's variables removed),
so a command started by one rank of a training job runs alone; it shares this process's stdout/stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

# Variables that make a process believe it is one rank of a distributed job.
_LAUNCH_VARIABLES = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
)
_LAUNCH_PREFIXES = ("TORCHELASTIC_", "ACCELERATE_", "FSDP_")


def ina_command(argv: Sequence[str]) -> list[str]:
    """The process arguments of ``ina ARGV`` with this interpreter (no console script needed on PATH)."""
    return [sys.executable, "-c", "import sys; from ina_cli import main; sys.exit(main(sys.argv[1:]))", *argv]


def run_ina(argv: Sequence[str], timeout: float | None = None) -> int:
    """Run ``ina ARGV`` in a fresh, non-distributed process and wait; returns its exit code."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in _LAUNCH_VARIABLES and not name.startswith(_LAUNCH_PREFIXES)
    }
    sys.stdout.flush()
    sys.stderr.flush()
    return subprocess.run(ina_command(argv), env=env, timeout=timeout, check=False).returncode
