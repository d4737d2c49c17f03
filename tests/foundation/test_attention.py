"""compute_attention: head averages vs an independent computation, masks, adapters, switching, errors."""

import math

import numpy as np
import pytest
import torch
from peft import get_peft_model

import ina
from ina.foundation.attention import compute_attention, resolve_layers
from ina.testing import tiny_model, tiny_tokenizer

TEXT, PAIR = "I put my red bag in the black bag.", "What is the colour of my bag?"
TARGETS = {"bert": ["query", "key", "value"], "llama": ["q_proj", "k_proj", "v_proj"]}


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def adapted(arch: str, inhibition: float, nonzero: bool = True, **overrides) -> torch.nn.Module:
    model = tiny_model(arch, attn_implementation="eager", **overrides)
    config = ina.InAConfig(
        r=4, lora_alpha=16, target_modules=TARGETS[arch], inhibition=inhibition, init_lora_weights=not nonzero
    )
    peft_model = get_peft_model(model, config)
    if nonzero:  # B = 0 after init would make any adapter equal the base; give it real weights
        torch.manual_seed(1)
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.data.normal_(0, 0.5)
    return peft_model.eval()


def manual_bert_layer1(
    model: torch.nn.Module, input_ids: torch.Tensor, token_type_ids: torch.Tensor
) -> torch.Tensor:
    """softmax(Q Kᵀ / √d) of BERT's first layer from its own weights, averaged over heads: (T, T)."""
    bert = model.bert if hasattr(model, "bert") else model
    with torch.no_grad():
        x = bert.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)[0]  # (T, hidden)
        attention = bert.encoder.layer[0].attention.self
        heads = model.config.num_attention_heads
        d = model.config.hidden_size // heads
        q = attention.query(x).view(-1, heads, d).transpose(0, 1)  # (H, T, d)
        k = attention.key(x).view(-1, heads, d).transpose(0, 1)  # (H, T, d)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)  # (H, T, T)
    return weights.mean(dim=0)


def test_bert_head_average_equals_softmax_qk_by_hand(tokenizer):
    model = tiny_model("bert", head="base", attn_implementation="eager")
    result = compute_attention(model, tokenizer, TEXT, PAIR, layers=[1])
    encoded = tokenizer(TEXT, PAIR, return_tensors="pt")
    token_types = encoded.get("token_type_ids", torch.zeros_like(encoded["input_ids"]))
    expected = manual_bert_layer1(model, encoded["input_ids"], token_types)
    assert result["layers"] == [1] and result["causal"] is False and result["truncated"] is False
    assert len(result["tokens"]) == encoded["input_ids"].shape[1]
    np.testing.assert_allclose(np.asarray(result["attention"][0]), expected.numpy(), atol=1e-5)


def test_llama_matches_output_attentions_and_is_causal(tokenizer):
    model = tiny_model("llama", attn_implementation="eager")
    result = compute_attention(model, tokenizer, TEXT, PAIR, layers=[-1, 1])
    assert result["layers"] == [2, 1] and result["causal"] is True
    ids = tokenizer(f"{TEXT} {PAIR}", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        attentions = model(ids, output_attentions=True).attentions
    for matrix, layer in zip(result["attention"], result["layers"], strict=True):
        matrix = np.asarray(matrix)
        np.testing.assert_allclose(matrix, attentions[layer - 1][0].mean(0).numpy(), atol=1e-6)
        np.testing.assert_allclose(matrix.sum(-1), 1.0, atol=1e-5)
        assert np.all(np.triu(matrix, k=1) == 0)  # future tokens masked
        assert np.all(np.diag(matrix) > 0)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_adapter_column_differs_from_base_and_base_equals_plain_model(arch, tokenizer):
    plain = compute_attention(tiny_model(arch, attn_implementation="eager"), tokenizer, TEXT, PAIR)
    model = adapted(arch, inhibition=0.3)
    model.set_adapter("default")
    base = compute_attention(model, tokenizer, TEXT, PAIR, adapter_name=None)
    with_adapter = compute_attention(model, tokenizer, TEXT, PAIR, adapter_name="default")
    np.testing.assert_allclose(np.asarray(base["attention"]), np.asarray(plain["attention"]), atol=1e-6)
    assert np.abs(np.asarray(with_adapter["attention"]) - np.asarray(base["attention"])).max() > 1e-3
    np.testing.assert_allclose(np.asarray(with_adapter["attention"]).sum(-1), 1.0, atol=1e-5)
    assert model.active_adapter == "default" and not model.training  # state left alone


def test_each_adapter_runs_its_own_gate(tokenizer):
    model = adapted("bert", inhibition=0.0)
    model.add_adapter(
        "gated", ina.InAConfig(r=4, lora_alpha=16, target_modules=TARGETS["bert"], inhibition=0.9)
    )
    for _name, module in model.named_modules():  # same A and B as "default": only the gate differs
        if hasattr(module, "lora_A") and "gated" in module.lora_A:
            module.lora_A["gated"].weight.data.copy_(module.lora_A["default"].weight.data)
            module.lora_B["gated"].weight.data.copy_(module.lora_B["default"].weight.data)
    lora = np.asarray(compute_attention(model, tokenizer, TEXT, adapter_name="default")["attention"])
    gated = np.asarray(compute_attention(model, tokenizer, TEXT, adapter_name="gated")["attention"])
    assert np.abs(lora - gated).max() > 1e-4


def test_fresh_adapter_equals_base(tokenizer):
    model = adapted("bert", inhibition=0.3, nonzero=False)
    base = np.asarray(compute_attention(model, tokenizer, TEXT, PAIR)["attention"])
    fresh = np.asarray(compute_attention(model, tokenizer, TEXT, PAIR, adapter_name="default")["attention"])
    np.testing.assert_array_equal(fresh, base)


def test_sdpa_model_is_switched_to_eager_for_the_call_and_restored(tokenizer):
    sdpa = tiny_model("llama", attn_implementation="sdpa")
    result = compute_attention(sdpa, tokenizer, TEXT)
    assert sdpa.config._attn_implementation == "sdpa"
    eager = compute_attention(tiny_model("llama", attn_implementation="eager"), tokenizer, TEXT)
    np.testing.assert_allclose(np.asarray(result["attention"]), np.asarray(eager["attention"]), atol=1e-6)
    # the server's case: a PeftModel over an SDPA model, left in training mode
    peft_model = get_peft_model(sdpa, ina.InAConfig(r=4, target_modules=TARGETS["llama"], inhibition=0.3))
    peft_model.train()
    adapted_result = compute_attention(peft_model, tokenizer, TEXT, adapter_name="default")
    np.testing.assert_allclose(
        np.asarray(adapted_result["attention"]), np.asarray(eager["attention"]), atol=1e-6
    )
    assert peft_model.training and peft_model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("arch", ["gpt2", "bloom"])
def test_other_decoders_are_causal(arch, tokenizer):
    result = compute_attention(tiny_model(arch, attn_implementation="eager"), tokenizer, TEXT, PAIR)
    matrices = np.asarray(result["attention"])
    assert result["causal"] is True and np.all(np.triu(matrices, k=1) == 0)
    np.testing.assert_allclose(matrices.sum(-1), 1.0, atol=1e-5)


def test_long_text_is_truncated_to_the_context(tokenizer):
    model = tiny_model("llama", attn_implementation="eager", max_position_embeddings=16)
    result = compute_attention(model, tokenizer, " ".join([TEXT] * 10), layers=[1])
    assert result["truncated"] is True and len(result["tokens"]) == 16
    assert np.asarray(result["attention"]).shape == (1, 16, 16)


def test_default_layers_are_first_and_last_four_deduplicated():
    assert resolve_layers(None, 2) == [1, 2]
    assert resolve_layers(None, 6) == [1, 2, 3, 4, 5, 6]
    assert resolve_layers(None, 12) == [1, 2, 3, 4, 9, 10, 11, 12]
    assert resolve_layers([-1, 12, 3], 12) == [12, 3]


@pytest.mark.parametrize("layers", [[3], [-3], [0]])
def test_out_of_range_layer_is_a_clear_error(layers, tokenizer):
    model = tiny_model("bert", attn_implementation="eager")
    with pytest.raises(ValueError, match=r"`layers`: layer -?\d is out of range: this model has 2 layers"):
        compute_attention(model, tokenizer, TEXT, layers=layers)


def test_bad_inputs_are_clear_errors(tokenizer):
    model = adapted("bert", inhibition=0.3)
    with pytest.raises(ValueError, match=r"`adapter_name` must be one of the loaded adapters \['default'\]"):
        compute_attention(model, tokenizer, TEXT, adapter_name="missing")
    with pytest.raises(ValueError, match="`text` must be a non-empty string"):
        compute_attention(model, tokenizer, "")
    with pytest.raises(ValueError, match="`adapter_name` must be None for a model without adapters"):
        compute_attention(tiny_model("bert"), tokenizer, TEXT, adapter_name="default")


def test_encoder_pair_uses_the_tokenizers_template():
    """With a real WordPiece tokenizer (MiniLM's, when installed): [CLS] a [SEP] b [SEP] and segment ids."""
    minilm = pytest.importorskip("ina.embedded.minilm")
    try:
        path = minilm.model_path()
    except RuntimeError as error:
        pytest.skip(str(error))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = tiny_model("bert", head="base", attn_implementation="eager", vocab_size=len(tokenizer))
    result = compute_attention(model, tokenizer, TEXT, PAIR, layers=[1])
    tokens = result["tokens"]
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and tokens.count("[SEP]") == 2
    assert tokens[tokens.index("[SEP]") + 1] == "what"
    encoded = tokenizer(TEXT, PAIR, return_tensors="pt")
    expected = manual_bert_layer1(
        model, encoded["input_ids"], encoded["token_type_ids"]
    )  # segment ids matter
    np.testing.assert_allclose(np.asarray(result["attention"][0]), expected.numpy(), atol=1e-5)
