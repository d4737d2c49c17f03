"""The llama.cpp adapter file: its keys, names, shapes and row order; and (slow) llama.cpp running it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ina.embedded.smollm import reverse_llama_permute
from ina.export.gguf_lora import FILE_NAME, check_llama, rotary_row_order
from ina.foundation.errors import UsageError
from ina.testing import tiny_config


def _field(reader, key):
    return reader.fields[key].contents()


def test_the_gguf_adapter_is_what_llama_cpp_reads(gguf_reader_and_export) -> None:
    reader, dst = gguf_reader_and_export
    assert _field(reader, "general.type") == "adapter"
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "adapter.type") == "lora"
    assert _field(reader, "adapter.lora.alpha") == pytest.approx(2.0)  # rank 2, scaling 1
    tensors = {t.name: t for t in reader.tensors}
    assert sorted(tensors) == sorted(
        f"blk.{i}.{kind}.weight.lora_{ab}"
        for i in (0, 1)
        for kind in ("attn_q", "attn_v", "attn_output")
        for ab in "ab"
    )
    peft = load_file(str(dst / "adapter_model.safetensors"))
    n_head = tiny_config("llama").num_attention_heads
    for block in (0, 1):
        for kind, module in (("attn_q", "q_proj"), ("attn_v", "v_proj"), ("attn_output", "o_proj")):
            prefix = f"base_model.model.model.layers.{block}.self_attn.{module}"
            A, B = peft[f"{prefix}.lora_A.weight"].numpy(), peft[f"{prefix}.lora_B.weight"].numpy()
            a = np.asarray(tensors[f"blk.{block}.{kind}.weight.lora_a"].data).reshape(A.shape)
            b = np.asarray(tensors[f"blk.{block}.{kind}.weight.lora_b"].data).reshape(B.shape)
            assert np.array_equal(a, A)
            # q rows are in llama.cpp's rotary order, the order the base GGUF's attn_q has
            assert np.array_equal(reverse_llama_permute(b, n_head) if kind == "attn_q" else b, B)


def test_rotary_row_order_is_what_the_embedded_converter_undoes() -> None:
    weight = np.arange(8 * 12 * 3, dtype=np.float32).reshape(8 * 12, 3)
    moved = rotary_row_order(weight, 8)
    assert not np.array_equal(moved, weight)
    assert np.array_equal(reverse_llama_permute(moved, 8), weight)


def test_gguf_is_refused_for_a_base_that_is_not_llama() -> None:
    with pytest.raises(UsageError, match="--format gguf"):
        check_llama(tiny_config("gpt2"))


@pytest.fixture(scope="module")
def gguf_reader_and_export(gated_export):
    import gguf

    _, dst, _ = gated_export
    return gguf.GGUFReader(str(dst / FILE_NAME)), dst


def _llama_cpp():
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (scripts/setup --gguf)")


@pytest.mark.slow
def test_llama_cpp_runs_the_export_like_peft(tmp_path) -> None:
    """SmolLM2 (the embedded GGUF, Q4_1) + a demo InA adapter exported to GGUF: llama.cpp's next tokens
    follow PEFT's export, not the base, on held-out text."""
    llama_cpp = _llama_cpp()
    from ina.export.export import export_lora
    from ina.export.gguf_check import base_gguf, llama_cpp_top1
    from ina.export.options import ExportOptions
    from ina.foundation.models import load_with_adapters, resolve_base_model
    from ina.testing import save_demo_adapter

    smollm = resolve_base_model("smollm")
    src = tmp_path / "ina"
    save_demo_adapter(smollm, src, inhibition=0.3, seed=1, targets=["q_proj", "k_proj", "v_proj", "o_proj"])
    report = export_lora(
        ExportOptions(
            src=str(src),
            dst=str(tmp_path / "lora"),
            format="gguf",
            calibration_tokens=4096,
            heldout_tokens=1024,
            prompts=4,
        )
    )
    assert (tmp_path / "lora" / FILE_NAME).is_file()
    model, tokenizer = load_with_adapters(
        smollm, {"export": tmp_path / "lora"}, dtype="float32", device="cpu"
    )
    ids = tokenizer("The quick brown fox jumps over the lazy dog. I put my red bag in the black bag.")[
        "input_ids"
    ]
    with torch.no_grad():
        peft_top = model(input_ids=torch.tensor([ids])).logits[0].argmax(-1).tolist()
        with model.disable_adapter():
            base_top = model(input_ids=torch.tensor([ids])).logits[0].argmax(-1).tolist()
    gguf_base = base_gguf(tmp_path)
    with_adapter = llama_cpp_top1(llama_cpp, gguf_base, tmp_path / "lora" / FILE_NAME, ids)
    without = llama_cpp_top1(llama_cpp, gguf_base, None, ids)
    agree = np.mean(np.array(with_adapter) == np.array(peft_top))
    assert agree >= 0.8, (agree, report["export"])
    assert np.mean(np.array(without) == np.array(base_top)) >= 0.8
    assert np.mean(np.array(with_adapter) == np.array(base_top)) < agree
