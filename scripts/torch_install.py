#!/usr/bin/env python3
"""The `pip install` arguments with which scripts/setup installs torch: the CPU build where there is no CUDA.

    python scripts/torch_install.py   # prints the arguments, one per line, and why on stderr; installs nothing

Standard library only (it runs before torch is installed), with the pip of the Python that runs it.

- ``TORCH_SPEC`` (default ``torch==2.13.0``) is the requirement; ``TORCH_INDEX_URL``, when set, is added as
  ``--extra-index-url`` as it is (empty: pip's own sources only), and nothing else is decided.
- CUDA present (``nvidia-smi`` on PATH), or not Linux: the requirement as it is, from pip's own sources
  (PyPI's Linux torch is the CUDA build; elsewhere it is the CPU build).
- Linux without CUDA: the CPU build. A pin ``torch==X`` becomes ``torch==X+cpu``, which only a CPU build
  satisfies, so that no multi-GB CUDA build can be chosen instead. If pip's local sources (its
  find-links, from pip.conf or ``PIP_FIND_LINKS``) already hold one, nothing is added and it installs
  from disk, offline. Otherwise the PyTorch CPU index is added with ``--extra-index-url``, not
  ``--index-url``: the index pip is configured with (PyPI or a mirror) still serves torch's dependencies.
  Why not always add it: pip ranks candidates by version, not by source, and of two files of the same
  version it takes the index's over the local one (tests/test_torch_install.py shows it), so adding the
  index where a local CPU build exists would download that build again, or fail without the network.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

DEFAULT_SPEC = "torch==2.13.0"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
_PIN = re.compile(r"\s*torch\s*==\s*([0-9][0-9A-Za-z.!]*)\s*", re.IGNORECASE)


def cpu_requirement(spec: str) -> str:
    """``torch==X`` → ``torch==X+cpu`` (only a CPU build satisfies it); any other requirement unchanged."""
    pin = _PIN.fullmatch(spec)
    return f"torch=={pin.group(1)}+cpu" if pin else spec


def choose(
    spec: str, *, linux: bool, cuda: bool, local_cpu_build: str | None, index_url: str | None
) -> tuple[list[str], str]:
    """The pip install arguments and why, from what was found; ``local_cpu_build`` is where pip's local
    sources hold a CPU build of ``cpu_requirement(spec)`` (None: they hold none)."""
    if index_url is not None:
        if not index_url:
            return [spec], "TORCH_INDEX_URL is empty: pip's own sources only"
        return ["--extra-index-url", index_url, spec], "TORCH_INDEX_URL names the index"
    if cuda:
        return [spec], "CUDA is present (nvidia-smi): pip's own sources (PyPI's CUDA build)"
    if not linux:
        return [spec], f"not Linux ({sys.platform}): pip's own sources (PyPI's build is the CPU one)"
    requirement = cpu_requirement(spec)
    if local_cpu_build:
        return [requirement], f"no CUDA; a CPU build is on this machine ({local_cpu_build}): no index added"
    return ["--extra-index-url", CPU_INDEX, requirement], "no CUDA, no local CPU build: the PyTorch CPU index"


def find_local_cpu_build(requirement: str, python: str = sys.executable) -> str | None:
    """Where pip's find-links hold a CPU build (``+cpu``) satisfying ``requirement``, asked of pip itself
    without any index (no network); None when they hold none."""
    command = [python, "-m", "pip", "install", "--dry-run", "--quiet", "--no-index", "--no-deps"]
    command += ["--ignore-installed", "--disable-pip-version-check", "--report", "-", requirement]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        chosen = json.loads(done.stdout)["install"][0] if done.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError, KeyError, IndexError):
        return None
    if chosen is None or not chosen["metadata"]["version"].partition("+")[2].startswith("cpu"):
        return None
    return str(chosen["download_info"]["url"])


def main() -> int:
    spec = os.environ.get("TORCH_SPEC") or DEFAULT_SPEC
    index_url = os.environ.get("TORCH_INDEX_URL")
    linux, cuda = sys.platform.startswith("linux"), shutil.which("nvidia-smi") is not None
    local = None
    if index_url is None and linux and not cuda:
        local = find_local_cpu_build(cpu_requirement(spec))
    arguments, why = choose(spec, linux=linux, cuda=cuda, local_cpu_build=local, index_url=index_url)
    print(f"setup: torch: pip install {' '.join(arguments)} ({why})", file=sys.stderr)
    print("\n".join(arguments))
    return 0


if __name__ == "__main__":
    sys.exit(main())
