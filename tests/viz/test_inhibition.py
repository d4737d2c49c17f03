"""compute_inhibition: hook-captured gate statistics vs an independent computation from the layer weights."""

import pytest
import torch
import torch.nn.functional as F
from peft import get_peft_model

import ina
from ina.testing import tiny_model, tiny_tokenizer
from ina.viz.inhibition import compute_inhibition, gate_statistics, short_name

TEXTS = ["I put my red bag in the black bag.", "What is the colour of my bag?"]


def nonzero_adapter(inhibition: float) -> torch.nn.Module:
    model = tiny_model("llama", attn_implementation="eager")
    config = ina.InAConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], inhibition=inhibition)
    peft_model = get_peft_model(model, config)
    torch.manual_seed(1)
    for name, parameter in peft_model.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(0, 0.5)
    return peft_model.eval()


def test_gate_statistics_worked_example():
    h = torch.tensor([[1.0, -2.0, 0.5, 3.0]])  # REFERENCE.md: ρ = 0.3 → threshold 0.9
    share, token_max = gate_statistics(h, 0.3)
    assert token_max.tolist() == [3.0]
    assert share.tolist() == [0.5]  # -2.0 and 0.5 are below 0.9
    assert gate_statistics(h, 0.0)[0].tolist() == [0.0]  # gate off: nothing inhibited


@pytest.mark.parametrize("inhibition", [0.0, 0.3])
def test_hooked_statistics_equal_a_computation_from_the_weights(inhibition):
    model = nonzero_adapter(inhibition)
    tokenizer = tiny_tokenizer()
    layer = model.base_model.model.model.layers[1].self_attn.v_proj
    inputs = []
    handle = layer.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach().clone()))
    try:
        result = compute_inhibition(model, tokenizer, TEXTS, "default")
    finally:
        handle.remove()
    assert result["settings"]["inhibition"] == inhibition
    module = next(m for m in result["modules"] if m["module"].endswith("layers.1.self_attn.v_proj"))
    assert module["name"] == "L2.v_proj"
    for text_index, x in enumerate(inputs):
        x = x[0]  # (T, in)
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        h = x @ a.T  # (T, r)
        token_max = h.amax(-1)
        below = (
            (h < inhibition * token_max[:, None]).float().mean(-1)
            if inhibition
            else torch.zeros_like(token_max)
        )
        delta = ina.ina_delta(x, a, b, layer.scaling["default"], inhibition)  # (T, out)
        base = F.linear(x, layer.base_layer.weight, layer.base_layer.bias)  # (T, out)
        relative = delta.norm(dim=-1) / base.norm(dim=-1)
        stats = module["per_text"][text_index]
        torch.testing.assert_close(torch.tensor(stats["token_max"]), token_max, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.tensor(stats["below_threshold"]), below)
        torch.testing.assert_close(torch.tensor(stats["relative_norm"]), relative, atol=1e-4, rtol=1e-4)
    assert all(r > 0 for r in module["relative_norm"])  # a non-zero adapter moves the output
    if inhibition:
        assert 0 < sum(module["below_threshold"]) / len(module["below_threshold"]) < 1


def test_stronger_inhibition_pushes_more_units_below_the_threshold():
    tokenizer = tiny_tokenizer()
    means = []
    for inhibition in (0.1, 0.9):
        result = compute_inhibition(nonzero_adapter(inhibition), tokenizer, TEXTS, "default")
        values = [v for m in result["modules"] for v in m["below_threshold"]]
        means.append(sum(values) / len(values))
    assert means[0] < means[1]


def test_short_names():
    assert short_name("base_model.model.bert.encoder.layer.3.attention.self.query") == "L4.query"
    assert short_name("base_model.model.lm_head") == "lm_head"


def test_unknown_adapter_is_a_clear_error():
    with pytest.raises(ValueError, match=r"`adapter_name` must be one of the loaded adapters \['default'\]"):
        compute_inhibition(nonzero_adapter(0.3), tiny_tokenizer(), TEXTS, "missing")


def test_text_pairs_are_encoded_as_pairs():
    tokenizer = tiny_tokenizer()
    model = nonzero_adapter(0.3)
    result = compute_inhibition(model, tokenizer, [(TEXTS[0], TEXTS[1])], "default")
    expected = len(
        tokenizer(f"{TEXTS[0]} {TEXTS[1]}")["input_ids"]
    )  # causal models join the pair with a space
    assert all(len(m["per_text"][0]["below_threshold"]) == expected for m in result["modules"])
