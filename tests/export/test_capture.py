"""The hooks see what the model computes; the calibration split keeps held-out text out of the fit."""

from __future__ import annotations

import json

import torch

from ina.export.calibration import load_calibration
from ina.export.capture import MomentCapture, adapted_layers
from ina.foundation.models import load_with_adapters
from ina.foundation.prompts import PromptTemplate
from tests.export.conftest import make_adapter


def test_the_captured_branch_is_what_the_layer_adds(tmp_path, tiny_base) -> None:
    src = make_adapter(tiny_base, tmp_path / "ina", inhibition=0.3, targets=("q_proj", "k_proj", "v_proj"))
    model, _ = load_with_adapters(tiny_base, {"ina": src}, dtype="float32", device="cpu")
    layers = adapted_layers(model, "ina")
    assert len(layers) == 6 and all(layer.inhibition == 0.3 for layer in layers)
    seen = {}

    def keep(module, args, output, name):
        seen[name] = (args[0].reshape(-1, args[0].shape[-1]), output - module.base_layer(args[0]))

    handles = [
        layer.module.register_forward_hook(lambda m, a, o, n=layer.name: keep(m, a, o, n)) for layer in layers
    ]
    capture = MomentCapture(layers)
    ids = torch.arange(5, 45).reshape(2, 20)
    with torch.no_grad(), capture.attached():
        for _ in range(2):  # the second batch checks that the sharing pattern holds
            model(input_ids=ids)
            capture.end_batch()
    for handle in handles:
        handle.remove()
    for index, layer in enumerate(layers):
        x, added = seen[layer.name]
        assert torch.allclose(layer.delta(x), added.reshape(x.shape[0], -1), atol=1e-6)
        moments = capture.moments[index]
        assert moments.count == 2 * 40
        expected = x.double().T @ added.reshape(x.shape[0], -1).double()
        assert float((moments.cross - 2 * expected).norm() / expected.norm()) < 1e-5
    # q, k and v of a block read the same tensor: one XᵀX for the three
    assert capture.leader == [0, 0, 0, 3, 3, 3]
    assert capture.moments[1].gram is capture.moments[0].gram
    assert capture.moments[3].gram is not capture.moments[0].gram


def test_calibration_keeps_recorded_heldout_prompts_out_of_the_fit(tmp_path, calibration_file) -> None:
    from ina.testing import tiny_tokenizer

    with open(calibration_file, encoding="utf-8") as file:
        records = json.load(file)
    known = [(r["instruction"], r["input"]) for r in records[:3]]
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    summary = {"files": [calibration_file], "examples": [{"instruction": i, "input": x} for i, x in known]}
    (adapter / "training_summary.json").write_text(json.dumps(summary))
    tokenizer = tiny_tokenizer()
    data = load_calibration(
        adapter, None, PromptTemplate.load("chat"), tokenizer, 2000, 500, 64, True, 0, known
    )
    assert data.source["chosen_by"].startswith("the adapter's training data")
    assert [(s.instruction, s.input) for s in data.heldout[:3]] == known
    fitted = {(s.instruction, s.input) for s in data.fit}
    assert not fitted & set(known)
    assert not fitted & {(s.instruction, s.input) for s in data.heldout}
    assert data.source["fit_tokens"] >= 2000 and data.source["heldout_tokens"] >= 500
    assert all(len(s.input_ids) <= 64 and any(s.answer) for s in data.fit)
