"""The ``ina`` console script: parse the command line before any framework is imported.

It lives outside the ``ina`` package because importing ``ina`` registers InA with PEFT, which
imports torch, transformers and PEFT (seconds). Imported from here, ``ina`` defers that until a
command runs, so ``ina --help`` and usage errors answer at once; ``import ina`` from Python is
unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

#: Read by ``ina/__init__.py``: import the adapter core (and so the frameworks) only when used.
DEFER_FRAMEWORK_IMPORTS = True


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ina`` console script; returns the process exit code."""
    from ina.cli import main as run

    return run(argv)
