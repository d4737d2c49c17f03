"""The vLLM plugin's parts that need no vLLM (default suite, seconds): the gate on the shrink buffer held
to ``ina.core.functional``, which folders get a gate, the version check, and the plugin's imports."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
import torch

from ina.core.functional import ina_delta, inhibit
from ina.core.loading import AdapterFileError
from ina.integrations.vllm.adapters import AdapterGate, InAUnsupportedError, adapter_gate
from ina.integrations.vllm.gate import SlotGate, clear_base_rows, gate_buffer, rows_by_slot
from ina.integrations.vllm.version import UnsupportedVLLMError, check_vllm_version

PLUGIN = Path(__file__).resolve().parents[2] / "src" / "ina" / "integrations"

# ---------------------------------------------------------------------------------- the gate on the buffer

R, IN, OUT = 8, 16, 6  # max_lora_rank, input and output size of each slice
# slot -> (gate or None for plain LoRA, rank per slice; 0 = slice not adapted)
SLOTS = {
    0: (AdapterGate(0.3, "leaky_relu", 0.01), (4, 8, 2)),
    1: (AdapterGate(0.9, "gelu", 0.0), (8, 0, 3)),
    2: (None, (4, 4, 4)),
}
TOKEN_SLOTS = [-1, 0, 1, 0, 2, -1, 1, 0, 2]


def _weights(generator: torch.Generator) -> dict:
    return {
        (slot, s): (torch.randn(r, IN, generator=generator), torch.randn(OUT, r, generator=generator))
        for slot, (_, ranks) in SLOTS.items()
        for s, r in enumerate(ranks)
        if r
    }


def _vllm_like_delta(x: torch.Tensor, weights: dict, token_slots: list[int]) -> torch.Tensor:
    """vLLM's shrink into a zero-padded (S, T, R) buffer, the plugin's gate, then expand: (T, S·OUT)."""
    buffer = torch.zeros(3, len(token_slots), R)
    for (slot, s), (a, _) in weights.items():
        for t, token_slot in enumerate(token_slots):
            if token_slot == slot:
                buffer[s, t, : a.shape[0]] = a @ x[t]  # the padded ranks stay 0
    gates = {slot: SlotGate(gate, ranks) for slot, (gate, ranks) in SLOTS.items() if gate is not None}
    gate_buffer(buffer, rows_by_slot(torch.tensor(token_slots)), gates)
    out = torch.zeros(len(token_slots), 3, OUT)
    for (slot, s), (_, b) in weights.items():
        for t, token_slot in enumerate(token_slots):
            if token_slot == slot:
                out[t, s] = b @ buffer[s, t, : b.shape[1]]
    return out.reshape(len(token_slots), -1)


def test_gate_on_the_buffer_is_inhibit_per_token_slot_and_slice() -> None:
    """Each InA row of each slice is ``ina_delta`` with its own A, B and ρ; LoRA rows are plain; base rows 0."""
    generator = torch.Generator().manual_seed(0)
    weights, x = _weights(generator), torch.randn(len(TOKEN_SLOTS), IN, generator=generator)
    got = _vllm_like_delta(x, weights, TOKEN_SLOTS).view(len(TOKEN_SLOTS), 3, OUT)
    for t, slot in enumerate(TOKEN_SLOTS):
        for s in range(3):
            if slot < 0 or (slot, s) not in weights:
                assert torch.equal(got[t, s], torch.zeros(OUT))
                continue
            a, b = weights[slot, s]
            gate = SLOTS[slot][0]
            rho, activation, slope = (
                (gate.inhibition, gate.activation, gate.negative_slope) if gate else (0, "identity", 0)
            )
            expected = ina_delta(x[t : t + 1], a, b, 1.0, rho, activation, slope)[0]
            torch.testing.assert_close(got[t, s], expected, rtol=1e-5, atol=1e-5)


def test_padded_ranks_never_win_the_max() -> None:
    """A token whose real h are all negative: the max is theirs, not the padding's 0."""
    h = -torch.rand(1, 1, 3) - 0.5  # (S=1, T=1, r=3), all < 0
    buffer = torch.cat([h, torch.zeros(1, 1, R - 3)], dim=-1)  # zero-padded to R
    gate_buffer(
        buffer, rows_by_slot(torch.tensor([0])), {0: SlotGate(AdapterGate(0.5, "identity", 0.0), (3,))}
    )
    assert torch.equal(buffer[0, :, :3], inhibit(h[0], 0.5, "identity"))
    assert not torch.allclose(
        buffer[0, :, :3], inhibit(torch.cat([h, torch.zeros(1, 1, R - 3)], -1)[0], 0.5, "identity")[:, :3]
    )
    assert torch.equal(buffer[0, :, 3:], torch.zeros(1, R - 3))  # padding untouched


def test_one_slot_batches_take_the_unindexed_path_with_the_same_result() -> None:
    generator = torch.Generator().manual_seed(1)
    weights, x = _weights(generator), torch.randn(4, IN, generator=generator)
    assert rows_by_slot(torch.tensor([0, 0, 0, 0])) == {0: None}
    one = _vllm_like_delta(x, weights, [0, 0, 0, 0])
    mixed = _vllm_like_delta(torch.cat([x, x]), weights, [0, 0, 0, 0, 2, 2, 2, 2])[:4]
    torch.testing.assert_close(one, mixed, rtol=0, atol=1e-6)


def test_rows_by_slot() -> None:
    assert rows_by_slot(torch.tensor([-1, -1])) == {-1: None}
    rows = rows_by_slot(torch.tensor([1, -1, 0, 1]))
    assert set(rows) == {-1, 0, 1}  # a (T, 1) mask of each slot's rows
    assert rows[1].squeeze(1).tolist() == [True, False, False, True]
    assert rows[0].squeeze(1).tolist() == [False, False, True, False]
    assert rows[-1].squeeze(1).tolist() == [False, True, False, False]


def test_base_rows_are_cleared() -> None:
    """Whatever vLLM's CPU shrink wrote into base rows (the last slot's h), expand then adds nothing."""
    buffer = torch.ones(2, 4, R)
    clear_base_rows(buffer, rows_by_slot(torch.tensor([0, -1, 3, -1])))
    assert buffer[:, [1, 3]].abs().sum() == 0 and torch.equal(buffer[:, [0, 2]], torch.ones(2, 2, R))
    clear_base_rows(buffer, rows_by_slot(torch.tensor([2, 2, 2, 2])))  # no base row: unchanged
    assert torch.equal(buffer[:, [0, 2]], torch.ones(2, 2, R))


# ---------------------------------------------------------------------------------- which folders are gated


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    from ina import InAConfig
    from ina.foundation.harness import peft_model
    from ina.testing import tiny_model

    root = tmp_path_factory.mktemp("folders")
    tiny_model("llama").save_pretrained(root / "base")
    out = {}
    configs = {
        "ina": InAConfig(r=2, target_modules=["q_proj", "down_proj"], inhibition=0.3, activation="gelu"),
        "rho0": InAConfig(r=2, target_modules=["q_proj"], inhibition=0.0),
        "lora": LoraConfig(r=2, target_modules=["q_proj"]),
        "embedding": InAConfig(r=2, target_modules=["q_proj", "embed_tokens"], inhibition=0.3),
    }
    for name, config in configs.items():
        model = peft_model(AutoModelForCausalLM.from_pretrained(root / "base"), config)
        model.save_pretrained(root / name, save_embedding_layers=False)
        out[name] = root / name
    shutil.copytree(root / "lora", root / "authors")
    config = json.loads((root / "authors" / "adapter_config.json").read_text())
    (root / "authors" / "adapter_config.json").write_text(json.dumps({**config, "lora_inhibition": 0.2}))
    out["authors"] = root / "authors"
    shutil.copytree(root / "ina", root / "bad")
    config = json.loads((root / "bad" / "adapter_config.json").read_text())
    (root / "bad" / "adapter_config.json").write_text(json.dumps({**config, "inhibition": 1.5}))
    out["bad"] = root / "bad"
    return out


def test_gated_folders(folders: dict[str, Path]) -> None:
    assert adapter_gate(folders["ina"]) == AdapterGate(0.3, "gelu", 0.01)
    assert adapter_gate(folders["authors"]) == AdapterGate(0.2, "leaky_relu", 0.01)  # no markers: still exact
    assert adapter_gate(folders["rho0"]) is None  # exactly LoRA: vLLM's own path
    assert adapter_gate(folders["lora"]) is None


def test_refused_folders_in_one_line(folders: dict[str, Path]) -> None:
    with pytest.raises(AdapterFileError, match=r"`inhibition` must be a number in \[0, 1\); got 1.5") as bad:
        adapter_gate(folders["bad"])
    with pytest.raises(InAUnsupportedError, match="not embeddings or the output head") as embedding:
        adapter_gate(folders["embedding"])
    for error in (bad.value, embedding.value):
        assert "\n" not in str(error)


def test_version_check_refuses_other_versions_in_one_line() -> None:
    assert check_vllm_version("0.32.0") == "0.32.0"
    for other in ("0.33.0", "0.31.2", None):
        with pytest.raises(UnsupportedVLLMError, match=r"patches vLLM 0\.32\.0 only; got vLLM") as error:
            check_vllm_version(other)
        assert "\n" not in str(error.value) and "VLLM_PLUGINS" in str(error.value)


def test_the_plugin_imports_ina_core_only() -> None:
    """The architecture rule: the integration imports ``ina.core`` (and its own modules), no room."""
    for file in PLUGIN.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            for name in names:
                if name == "ina" or name.startswith("ina."):
                    assert name.startswith(("ina.core", "ina.integrations")), f"{file.name} imports {name}"
