"""InA's inference path (ina.core.gathered) against `functional.inhibit` and PEFT's per-adapter path."""

import pytest
import torch
from peft import LoraConfig

from ina import InAConfig, inhibit
from ina.core import gathered
from ina.core.gathered import GroupGate, NotPreparableError, prepare
from ina.foundation.harness import peft_model
from ina.testing import tiny_model

# (name, r, ρ, activation, slope): ranks 4/8/16 mixed, the gate off and on, every activation
ADAPTERS = [
    ("plain", 4, 0.0, "leaky_relu", 0.01),
    ("mild", 8, 0.3, "leaky_relu", 0.01),
    ("steep", 16, 0.9, "gelu", 0.01),
    ("slope", 8, 0.5, "leaky_relu", 0.2),
    ("ident", 4, 0.6, "identity", 0.01),
]
LLAMA_TARGETS = ["embed_tokens", "q_proj", "v_proj", "down_proj"]


def build(architecture="llama", targets=LLAMA_TARGETS, dtype=torch.float32, adapters=ADAPTERS):
    """A tiny model with several non-zero adapters (every lora_ tensor random, so none is a no-op)."""
    model = None
    for name, r, rho, activation, slope in adapters:
        config = InAConfig(
            r=r,
            lora_alpha=2 * r,
            target_modules=targets,
            inhibition=rho,
            activation=activation,
            negative_slope=slope,
            task_type="CAUSAL_LM",
        )
        if model is None:
            model = peft_model(tiny_model(architecture), config, adapter_name=name)
        else:
            model.add_adapter(name, config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for key, parameter in model.named_parameters():
            if "lora_" in key:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model.to(dtype).eval()


def ids_for(rows, length=7, seed=2):
    return torch.randint(3, 500, (rows, length), generator=torch.Generator().manual_seed(seed))


MIXED = ["plain", "__base__", "mild", "steep", "mild", "slope", "steep", "ident", "steep", "plain"]


@pytest.mark.parametrize("mode", ["one setting", "mixed settings"])
def test_group_gate_is_inhibit_per_group_and_padding_never_wins(mode):
    settings = [(0.3, "leaky_relu", 0.01)] * 3
    if mode == "mixed settings":
        settings = [
            (0.0, "leaky_relu", 0.01),
            (0.9, "gelu", 0.01),
            (0.5, "leaky_relu", 0.2),
            (0.6, "identity", 0.01),
        ]
    ranks = [4, 16, 8, 12][: len(settings)]
    h = torch.randn(len(settings), 6, 16, dtype=torch.float64)
    h[:, :3] = -h[:, :3].abs() - 1  # tokens whose real entries are all negative: a padded 0 would be the max
    mask = torch.zeros(len(settings), 1, 16, dtype=torch.float64)
    for k, r in enumerate(ranks):
        mask[k, :, r:] = float("-inf")
        h[k, :, r:] = 0  # padded ranks have zero A rows, so h is 0 there
    got = GroupGate(settings, h.device, h.dtype)(h, mask)
    for k, (rho, activation, slope) in enumerate(settings):
        expected = inhibit(h[k, :, : ranks[k]], rho, activation, slope)
        torch.testing.assert_close(got[k, :, : ranks[k]], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mixed_batch_logits_equal_peft_per_adapter_path(dtype):
    model = build(dtype=dtype)
    ids = ids_for(len(MIXED))
    with torch.inference_mode():
        expected = model(input_ids=ids, adapter_names=MIXED).logits
        prepared = prepare(model)
        with prepared.route(MIXED):
            got = model.get_base_model()(input_ids=ids).logits
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    assert (expected - model.get_base_model()(input_ids=ids).logits).abs().max() > 0.01  # adapters matter
    torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)


def test_rows_already_grouped_by_adapter_are_neither_gathered_nor_scattered():
    model = build()
    rows = ["plain", "plain", "mild", "mild", "steep", "steep"]  # equal groups, in the order of the stacks
    ids = ids_for(len(rows))
    prepared = prepare(model)
    with torch.inference_mode():
        expected = model(input_ids=ids, adapter_names=rows).logits
        with prepared.route(rows):
            assert gathered._state.route.in_order
            got = model.get_base_model()(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_each_adapter_alone_equals_peft_and_outside_a_route_peft_runs_unchanged():
    model = build()
    ids = ids_for(3)
    prepared = prepare(model)
    with torch.inference_mode():
        for name, *_ in ADAPTERS:
            model.set_adapter(name)
            expected = model(input_ids=ids).logits  # no route: PEFT's own forward
            with prepared.route(name):
                got = model.get_base_model()(input_ids=ids).logits
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        with prepared.route("__base__"), model.disable_adapter():
            base = model(input_ids=ids).logits
        with prepared.route(["__base__"] * 3):
            torch.testing.assert_close(model.get_base_model()(input_ids=ids).logits, base, rtol=0, atol=0)
        prepared.close()
        assert all("forward" not in layer.__dict__ for layer in prepared.layers)


def test_greedy_decoding_of_a_mixed_batch_equals_peft():
    model = build()
    rows = ["steep", "mild", "__base__", "plain"]
    ids = ids_for(len(rows), length=5)
    prepared = prepare(model)
    outputs = {}
    with torch.inference_mode():
        for path in ("peft", "gathered"):
            tokens = ids
            for _ in range(6):  # greedy, no cache: each step re-runs the whole sequence
                if path == "peft":
                    logits = model(input_ids=tokens, adapter_names=rows).logits
                else:
                    with prepared.route(rows):
                        logits = model.get_base_model()(input_ids=tokens).logits
                tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            outputs[path] = tokens
    assert torch.equal(outputs["gathered"], outputs["peft"])


def test_conv1d_layers_of_gpt2():
    adapters = ADAPTERS[:3]
    model = build("gpt2", targets=["c_attn", "c_fc", "wte"], adapters=adapters)
    rows = ["mild", "__base__", "steep", "plain", "steep"]
    ids = ids_for(len(rows))
    with torch.inference_mode():
        expected = model(input_ids=ids, adapter_names=rows).logits
        with prepare(model).route(rows):
            got = model.get_base_model()(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_route_refuses_training_unknown_adapters_and_wrong_batches():
    model = build(adapters=ADAPTERS[:2])
    prepared = prepare(model)
    with pytest.raises(RuntimeError, match="inference only"), prepared.route("mild"):
        pass
    with torch.inference_mode():
        with pytest.raises(KeyError, match="nope"), prepared.route(["nope"]):
            pass
        with pytest.raises(ValueError, match="routed 2 rows"), prepared.route(["mild", "plain"]):
            model.get_base_model()(input_ids=ids_for(3))
        model.train()
        with pytest.raises(RuntimeError, match="inference only"), prepared.route("mild"):
            pass


def test_adapters_only_peft_computes_are_refused():
    config = LoraConfig(r=4, target_modules=["q_proj"], use_dora=True)
    model = peft_model(tiny_model("llama"), config)
    with pytest.raises(NotPreparableError, match="DoraLinearVariant"):
        prepare(model)
    saved = LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"])
    with pytest.raises(NotPreparableError, match="ModulesToSaveWrapper"):
        prepare(peft_model(tiny_model("llama"), saved))


def test_switch(monkeypatch):
    monkeypatch.setenv("INA_GATHERED", "0")
    assert not gathered.is_enabled()
    monkeypatch.setenv("INA_GATHERED", "1")
    assert gathered.is_enabled()


def test_float32_adapters_on_a_bfloat16_base():
    """PEFT's default (autocast_adapter_dtype): the branch in float32, each layer's output in the base's dtype."""
    model = build(targets=["q_proj", "v_proj", "down_proj"])
    model.get_base_model().to(torch.bfloat16)
    for layer in prepare(model).layers:
        layer.to(torch.float32).base_layer.to(torch.bfloat16)  # adapters float32, base bfloat16
    ids = ids_for(len(MIXED))
    with torch.inference_mode():
        expected = model(input_ids=ids, adapter_names=MIXED).logits
        with prepare(model).route(MIXED):
            got = model.get_base_model()(input_ids=ids).logits
    assert got.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected.float(), rtol=0.02, atol=0.02)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mixed_batch_on_cuda_equals_peft():
    model = build().cuda()
    ids = ids_for(len(MIXED)).cuda()
    with torch.inference_mode():
        expected = model(input_ids=ids, adapter_names=MIXED).logits
        with prepare(model).route(MIXED):
            got = model.get_base_model()(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
