"""InA as a PEFT tuner on real (tiny) architectures: invariants, save/load, merge, adapters, training."""

import copy

import pytest
import torch
from peft import AutoPeftModelForCausalLM, LoraConfig, PeftModel, get_peft_model
from torch import nn

import ina
from ina import InAConfig, MergeRefusedError, UnsupportedTargetError
from ina.testing import ARCHITECTURES, ENCODERS, tiny_model

# the attention projections each architecture names (BLOOM's fused query_key_value, GPT-2's Conv1D c_attn)
TARGETS = {
    "llama": ["q_proj", "v_proj"],
    "bloom": ["query_key_value"],
    "gpt2": ["c_attn"],
    "bert": ["query", "key", "value"],
    "roberta": ["query", "key", "value"],
    "deberta-v2": ["query_proj", "key_proj", "value_proj"],
}
IDS = torch.tensor([[5, 17, 42, 99, 7, 300], [8, 9, 250, 11, 12, 13]])


def output(model, ids=IDS, **kwargs):
    with torch.no_grad():
        return model(input_ids=ids, **kwargs).logits


def randomize_adapters(model, std=0.5):
    """Make the adapter non-zero (B is zero at init), so save/load and mixing checks cannot pass trivially."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.normal_(0, std)


def ina_model(arch="llama", inhibition=0.3, **kwargs):
    task = "SEQ_CLS" if arch in ENCODERS else "CAUSAL_LM"
    config = InAConfig(
        r=4, lora_alpha=8, target_modules=TARGETS[arch], inhibition=inhibition, task_type=task, **kwargs
    )
    return get_peft_model(tiny_model(arch), config)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_fresh_adapter_is_the_base_then_trains_only_adapter_parameters(arch):
    base = tiny_model(arch)
    expected = output(base)
    model = get_peft_model(
        base,
        InAConfig(
            r=4, target_modules=TARGETS[arch], task_type="SEQ_CLS" if arch in ENCODERS else "CAUSAL_LM"
        ),
    )
    assert model.peft_config["default"].peft_type == "INA"
    torch.testing.assert_close(output(model), expected, rtol=0, atol=0)

    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "classifier" in n or "score" in n for n in trainable)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    logits = model(input_ids=IDS).logits
    logits.float().pow(2).mean().backward()
    optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and changed <= trainable
    assert any("lora_B" in n for n in changed)


@pytest.mark.parametrize("arch", ["llama", "bloom", "gpt2", "bert"])
def test_rho_zero_equals_peft_lora_with_the_same_weights(arch):
    model = ina_model(arch, inhibition=0.0, activation="leaky_relu")
    randomize_adapters(model)
    task = "SEQ_CLS" if arch in ENCODERS else "CAUSAL_LM"
    lora = get_peft_model(
        tiny_model(arch), LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS[arch], task_type=task)
    )
    lora.load_state_dict(model.state_dict())
    torch.testing.assert_close(output(model), output(lora), rtol=0, atol=1e-6)
    # and the gate matters once ρ > 0
    gated = ina_model(arch, inhibition=0.3)
    gated.load_state_dict(model.state_dict())
    assert (output(gated) - output(lora)).abs().max() > 1e-3


def test_forward_matches_the_equation_layer_by_layer():
    model = ina_model("llama", inhibition=0.3, activation="gelu")
    randomize_adapters(model)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    x = torch.randn(2, 3, 32)
    expected = layer.base_layer(x) + ina.ina_delta(
        x,
        layer.lora_A["default"].weight,
        layer.lora_B["default"].weight,
        layer.scaling["default"],
        0.3,
        "gelu",
    )
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("shape", [(32,), (4, 32), (2, 3, 32), (2, 3, 4, 32)])
def test_any_leading_shape_and_per_token_independence(shape):
    layer_model = get_peft_model(nn.Sequential(nn.Linear(32, 16)), InAConfig(r=4, target_modules=["0"]))
    randomize_adapters(layer_model)
    x = torch.randn(*shape)
    rows = x.reshape(-1, 32)
    with torch.no_grad():
        out = layer_model(x)
        one_by_one = torch.stack([layer_model(row) for row in rows]).reshape(*shape[:-1], 16)
        torch.testing.assert_close(out, one_by_one)
        if rows.shape[0] > 1:  # change one token: no other token's output moves
            x2 = x.clone().reshape(-1, 32)
            x2[0] += 3.0
            out2 = layer_model(x2.reshape(shape)).reshape(-1, 16)
            assert not torch.equal(out2[0], out.reshape(-1, 16)[0])
            torch.testing.assert_close(out2[1:], out.reshape(-1, 16)[1:], rtol=0, atol=0)


def test_embedding_and_conv1d_targets_are_gated():
    model = get_peft_model(tiny_model("gpt2"), InAConfig(r=4, target_modules=["wte", "c_attn", "c_fc"]))
    randomize_adapters(model)
    wte = model.base_model.model.transformer.wte
    ids = IDS
    h = wte.lora_embedding_A["default"].T[ids]  # (batch, seq, r)
    expected = (
        wte.base_layer(ids)
        + (ina.inhibit(h, 0.3) @ wte.lora_embedding_B["default"].T) * wte.scaling["default"]
    )
    torch.testing.assert_close(wte(ids), expected)
    attn = model.base_model.model.transformer.h[0].attn.c_attn
    x = torch.randn(2, 5, 32)
    expected = attn.base_layer(x) + ina.ina_delta(
        x, attn.lora_A["default"].weight, attn.lora_B["default"].weight, attn.scaling["default"], 0.3
    )
    torch.testing.assert_close(attn(x), expected)


def test_unsupported_target_names_path_type_and_supported_types():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(UnsupportedTargetError) as error:
        get_peft_model(model, InAConfig(r=2, target_modules=["0", "2"]))
    message = str(error.value)
    assert "'0'" in message and "torch.nn.modules.conv.Conv2d" in message and "Conv1D" in message


def test_save_reload_gives_identical_logits_through_every_loader(tmp_path):
    model = ina_model("llama", inhibition=0.3, lora_dropout=0.1)
    randomize_adapters(model)
    model.eval()
    expected = output(model)
    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()

    loaded = PeftModel.from_pretrained(tiny_model("llama"), tmp_path / "adapter")
    assert isinstance(loaded.peft_config["default"], InAConfig)
    torch.testing.assert_close(output(loaded), expected, rtol=0, atol=0)

    loaded = ina.load_adapter(tiny_model("llama"), tmp_path / "adapter")
    torch.testing.assert_close(output(loaded), expected, rtol=0, atol=0)

    base_dir = tmp_path / "base"
    tiny_model("llama").save_pretrained(base_dir)
    model.peft_config["default"].base_model_name_or_path = str(base_dir)
    model.save_pretrained(tmp_path / "adapter2")
    auto = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter2")
    torch.testing.assert_close(output(auto), expected, rtol=0, atol=0)


def test_loaded_gate_settings_come_from_the_file(tmp_path):
    model = ina_model("llama", inhibition=0.9, activation="identity")
    randomize_adapters(model)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_model("llama"), tmp_path)
    gate = loaded.base_model.model.model.layers[1].self_attn.v_proj.lora_variant["default"].gate
    assert (gate.inhibition, gate.activation) == (0.9, "identity")


def test_merge_is_refused_and_the_model_left_intact():
    model = ina_model("llama", inhibition=0.3)
    randomize_adapters(model)
    expected = output(model)
    state = copy.deepcopy(model.state_dict())
    for merge in (
        model.merge_and_unload,
        model.merge_adapter,
        lambda: model.base_model.merge_adapter(["default"]),
    ):
        with pytest.raises(MergeRefusedError, match=r"inhibition=0\.3 > 0"):
            merge()
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    with pytest.raises(MergeRefusedError):
        layer.merge()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    torch.testing.assert_close(output(model), expected, rtol=0, atol=0)
    with pytest.raises(MergeRefusedError):
        model.add_weighted_adapter(["default"], [1.0], "combined")


def test_merge_is_exact_for_rho_zero_and_unload_returns_the_base():
    model = ina_model("llama", inhibition=0.0)
    randomize_adapters(model, std=0.1)
    expected = output(model)
    merged = model.merge_and_unload()
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(output(merged), expected, rtol=1e-5, atol=1e-5)

    base = tiny_model("llama")
    plain = output(base)
    model = get_peft_model(base, InAConfig(r=4, target_modules=["q_proj"], inhibition=0.3))
    randomize_adapters(model)
    unloaded = model.unload()
    assert type(unloaded).__name__ == "LlamaForCausalLM"
    torch.testing.assert_close(output(unloaded), plain, rtol=0, atol=0)


def test_several_adapters_disable_and_mixed_batches():
    model = ina_model("llama", inhibition=0.3)
    model.add_adapter("plain", InAConfig(r=4, target_modules=["q_proj", "v_proj"], inhibition=0.0))
    model.add_adapter(
        "strong", InAConfig(r=2, target_modules=["q_proj", "v_proj", "embed_tokens"], inhibition=0.9)
    )
    randomize_adapters(model)
    model.eval()
    base = tiny_model("llama")
    base_out = output(base)
    singles = {}
    for name in ("default", "plain", "strong"):
        model.set_adapter(name)
        singles[name] = output(model)
        assert (singles[name] - base_out).abs().max() > 1e-3
    with model.disable_adapter():
        torch.testing.assert_close(output(model), base_out, rtol=0, atol=0)

    ids = torch.cat([IDS, IDS])  # rows: 0,1 and 2,3 are the same sequences
    names = ["strong", "__base__", "default", "plain"]
    mixed = output(model, ids, adapter_names=names)
    expected = torch.stack([singles["strong"][0], base_out[1], singles["default"][0], singles["plain"][1]])
    torch.testing.assert_close(mixed, expected, rtol=1e-5, atol=1e-5)

    model.delete_adapter("strong")
    assert "strong" not in model.peft_config
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert "strong" not in q_proj.lora_variant and "strong" not in q_proj.ina_gate
    model.set_adapter("default")
    torch.testing.assert_close(output(model), singles["default"], rtol=0, atol=0)


def test_gradient_checkpointing_reentrant_and_not():
    model = ina_model("llama", inhibition=0.3)
    randomize_adapters(model)
    model.train()
    grads = {}
    for reentrant in (None, True, False):
        if reentrant is not None:
            model.base_model.model.activation_checkpointing_enable({"use_reentrant": reentrant})
            model.enable_input_require_grads()
        model.zero_grad()
        model(input_ids=IDS, labels=IDS).loss.backward()
        grads[reentrant] = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    for reentrant in (True, False):
        for name, grad in grads[None].items():
            torch.testing.assert_close(grads[reentrant][name], grad, rtol=1e-5, atol=1e-6)
    assert any(g.abs().sum() > 0 for n, g in grads[None].items() if "lora_A" in n)


def test_torch_compile_has_no_graph_breaks():
    model = ina_model("llama", inhibition=0.3)
    randomize_adapters(model)
    explanation = torch._dynamo.explain(model)(input_ids=IDS)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(input_ids=IDS).logits, output(model))


def test_rank_and_alpha_patterns_and_layer_selection():
    config = InAConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj"],
        layers_to_transform=[1],
        rank_pattern={"v_proj": 2},
        alpha_pattern={"v_proj": 2},
        use_rslora=True,
    )
    model = get_peft_model(tiny_model("llama"), config)
    layers = model.base_model.model.model.layers
    assert not hasattr(layers[0].self_attn.q_proj, "lora_A")
    q, v = layers[1].self_attn.q_proj, layers[1].self_attn.v_proj
    assert (q.r["default"], v.r["default"]) == (4, 2)
    assert (q.scaling["default"], v.scaling["default"]) == (8 / 2, 2 / 2**0.5)
    assert v.lora_variant["default"].gate.inhibition == 0.3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="bitsandbytes quantization needs a CUDA device")
@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_base_uses_the_same_per_token_gate(tmp_path, bits):
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    tiny_model("llama").save_pretrained(tmp_path)
    quantization = (
        BitsAndBytesConfig(load_in_4bit=True) if bits == 4 else BitsAndBytesConfig(load_in_8bit=True)
    )
    base = AutoModelForCausalLM.from_pretrained(
        tmp_path, quantization_config=quantization, device_map={"": 0}
    )
    model = get_peft_model(base, InAConfig(r=4, target_modules=["q_proj", "v_proj"], inhibition=0.3))
    randomize_adapters(model)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert type(layer).__name__ == ("Linear4bit" if bits == 4 else "Linear8bitLt")
    x = torch.randn(2, 3, 32, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        expected = layer.base_layer(x).float() + ina.ina_delta(
            x.float(),
            layer.lora_A["default"].weight,
            layer.lora_B["default"].weight,
            layer.scaling["default"],
            0.3,
        )
        torch.testing.assert_close(layer(x).float(), expected, rtol=2e-2, atol=2e-2)
        model(input_ids=IDS.cuda())  # whole model: no crash on any leading shape
