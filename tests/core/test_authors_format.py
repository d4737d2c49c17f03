"""The authors' adapters (peft_type LORA + lora_inhibition) load as InA with the right ρ; plain LoRA as ρ = 0."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

import ina
from ina.core.registry import AuthorsFormatError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "authors-bert-large-cola"  # in the repository


def bert_large_cased():
    """A bert-large-cased-shaped classifier with random weights (no download)."""
    from transformers import BertConfig, BertForSequenceClassification
    from transformers.initialization import no_init_weights

    config = BertConfig(
        vocab_size=28996,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
    )
    with no_init_weights():
        model = BertForSequenceClassification(config)
    torch.manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.02)
    return model.eval()


@pytest.fixture(scope="module")
def both_adapters():
    model = ina.load_adapter(bert_large_cased(), FIXTURES / "InA00", adapter_name="rho00")
    return ina.load_adapter(model, FIXTURES / "InA30", adapter_name="rho30")


@pytest.mark.parametrize(("folder", "rho"), [("InA00", 0.0), ("InA30", 0.3)])
def test_config_is_read_with_its_ratio(folder, rho):
    config = ina.read_adapter_config(FIXTURES / folder)
    assert (config.inhibition, config.activation, config.negative_slope) == (rho, "leaky_relu", 0.01)
    assert (config.r, config.lora_alpha, config.lora_dropout) == (4, 16, 0.1)
    assert config.target_modules == {"query", "key", "value"}


@pytest.mark.parametrize(("folder", "name"), [("InA00", "rho00"), ("InA30", "rho30")])
def test_every_tensor_lands_and_the_classifier_is_restored(both_adapters, folder, name):
    saved = load_file(FIXTURES / folder / "adapter_model.safetensors")
    params = dict(both_adapters.named_parameters())
    assert len(saved) == 146
    for key, tensor in saved.items():
        if ".lora_A." in key or ".lora_B." in key:
            target = key.replace(".lora_A.weight", f".lora_A.{name}.weight").replace(
                ".lora_B.weight", f".lora_B.{name}.weight"
            )
        else:  # classifier.{weight,bias}
            target = key.replace("classifier.", f"classifier.modules_to_save.{name}.")
        assert torch.equal(params[target], tensor), key


def test_the_gate_runs_with_the_ratio_of_each_adapter(both_adapters):
    query = both_adapters.base_model.model.bert.encoder.layer[5].attention.self.query
    assert "rho00" not in query.lora_variant  # ρ = 0: PEFT's plain LoRA path
    assert query.lora_variant["rho30"].gate.inhibition == 0.3
    ids = torch.tensor([[101, 146, 1508, 1139, 1894, 3821, 119, 102]])
    logits = {}
    for name in ("rho00", "rho30"):
        both_adapters.set_adapter(name)
        with torch.no_grad():
            logits[name] = both_adapters(input_ids=ids).logits
    with both_adapters.disable_adapter(), torch.no_grad():
        base = both_adapters(input_ids=ids).logits
    assert not torch.allclose(logits["rho00"], logits["rho30"])
    assert not torch.allclose(logits["rho30"], base)


def test_plain_lora_without_the_key_is_rho_zero_never_the_authors_default(tmp_path):
    shutil.copytree(FIXTURES / "InA30", tmp_path / "plain")
    config_file = tmp_path / "plain" / "adapter_config.json"
    data = json.loads(config_file.read_text())
    del data["lora_inhibition"]
    config_file.write_text(json.dumps(data))
    assert ina.read_adapter_config(tmp_path / "plain").inhibition == 0.0


def test_stock_peft_refuses_to_run_the_authors_inhibited_adapter_as_lora():
    # the config is read (and refused) before any weight is touched, so a tiny base will do
    from ina.testing import tiny_model

    with pytest.raises(AuthorsFormatError, match=r"ina.load_adapter"):
        PeftModel.from_pretrained(tiny_model("bert"), FIXTURES / "InA30")


def test_convert_writes_our_format(tmp_path):
    out = tmp_path / "converted"
    done = subprocess.run(
        [sys.executable, "-m", "ina", "convert", str(FIXTURES / "InA30"), str(out)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    data = json.loads((out / "adapter_config.json").read_text())
    assert data["peft_type"] == "INA" and data["inhibition"] == 0.3 and "lora_inhibition" not in data
    converted = load_file(str(out / "adapter_model.safetensors"))
    original = load_file(str(FIXTURES / "InA30" / "adapter_model.safetensors"))
    markers = {k: v for k, v in converted.items() if k.endswith(".ina_inhibition")}
    assert {k: v for k, v in converted.items() if k not in markers}.keys() == original.keys()
    assert all(torch.equal(converted[k], v) for k, v in original.items())  # the weights, unchanged
    assert (
        len(markers) == sum(k.endswith(".lora_A.weight") for k in original) > 0
    )  # LoRA-only engines refuse it
    assert all(v.item() == pytest.approx(0.3) for v in markers.values())
    again = subprocess.run(
        [sys.executable, "-m", "ina", "convert", str(FIXTURES / "InA30"), str(out)],
        capture_output=True,
        text=True,
    )
    assert again.returncode != 0 and "exists" in again.stderr
