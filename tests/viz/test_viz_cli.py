"""`ina viz attention | inhibition | curves` end to end on tiny saved models, and their input errors."""

import json

import matplotlib.image
import pytest
import torch
from peft import get_peft_model

import ina
from ina.cli import main
from ina.testing import tiny_model, tiny_tokenizer
from ina.viz.report import ATTENTION_FILES, CURVES_FILES, INHIBITION_FILES

TEXT, PAIR = "my red bag", "my bag?"  # short: drawing tick labels dominates the run time


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny BERT classifier folder with its tokenizer, and two non-zero adapters (ρ = 0 and 0.9)."""
    root = tmp_path_factory.mktemp("viz-models")
    tiny_model("bert").save_pretrained(root / "base")
    tiny_tokenizer().save_pretrained(root / "base")
    for inhibition in (0.0, 0.9):
        config = ina.InAConfig(
            r=4,
            target_modules=["query", "value"],
            inhibition=inhibition,
            task_type="SEQ_CLS",
            init_lora_weights=False,
        )
        model = get_peft_model(tiny_model("bert"), config)
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.data.normal_(0, 0.5)
        model.save_pretrained(root / f"rho{inhibition}")
    return root


def read_png(path):
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    return image


def test_attention_writes_grid_report_and_numbers(saved, tmp_path, capsys):
    out = tmp_path / "attention"
    code = main(
        ["viz", "attention", "--base_model", str(saved / "base"), "--adapter", f"lora0={saved / 'rho0.0'}",
         "--adapter", f"ina90={saved / 'rho0.9'}", "--text", TEXT, "--text_pair", PAIR, "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(ATTENTION_FILES)
    data = json.loads((out / "attention.json").read_text())
    assert [c["name"] for c in data["columns"]] == ["base", "lora0", "ina90"]
    assert data["layers"] == [1, 2] and data["causal"] is False
    assert [c["settings"]["inhibition"] for c in data["columns"][1:]] == [0.0, 0.9]
    base, lora = (torch.tensor(c["attention"]) for c in data["columns"][:2])
    torch.testing.assert_close(base.sum(-1), torch.ones(base.shape[:-1]))
    assert (lora - base).abs().max() > 1e-3  # a non-zero adapter moves attention
    assert data["moved"]["lora0"][0]["mean_abs_change"] > 0
    read_png(out / "attention-grid.png")
    read_png(out / "attention-moved.png")
    largest = max(float((torch.tensor(c["attention"]) - base).abs().max()) for c in data["columns"][1:])
    assert data["moved_scale"] == pytest.approx(largest)
    report = (out / "attention.html").read_text()
    assert report.count("<h2>Layer ") == 2 and report.count("data:image/png;base64,") == 2
    assert "attention moved by lora0" in capsys.readouterr().out


def test_inhibition_from_a_data_file(saved, tmp_path, capsys):
    data = tmp_path / "texts.jsonl"
    data.write_text(
        "\n".join(json.dumps({"instruction": t, "output": "ok"}) for t in (TEXT, PAIR, "a dog")) + "\n"
    )
    out = tmp_path / "inhibition"
    code = main(
        ["viz", "inhibition", "--base_model", str(saved / "base"), "--adapter", f"ina90={saved / 'rho0.9'}",
         "--adapter", f"lora0={saved / 'rho0.0'}", "--data", str(data), "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(INHIBITION_FILES)
    result = json.loads((out / "inhibition.json").read_text())
    assert [t["text"] for t in result["texts"]] == [f"{TEXT}\nok", f"{PAIR}\nok", "a dog\nok"]
    ina90, lora = result["adapters"]
    assert [m["name"] for m in ina90["modules"]] == ["L1.query", "L1.value", "L2.query", "L2.value"]
    assert ina90["summary"]["below_threshold"]["mean"] > 0 and lora["summary"]["below_threshold"]["mean"] == 0
    assert ina90["most_inhibited"] and not lora["most_inhibited"]
    table = (out / "inhibition.md").read_text()
    assert "| ina90 | 0.9 | leaky_relu | 4 |" in table and "## Most inhibited tokens: ina90" in table
    read_png(out / "inhibition.png")
    read_png(out / "inhibition-tokens.png")
    assert "| lora0 | 0 |" in capsys.readouterr().out


def trainer_state(folder, losses, eval_losses):
    """A trainer_state.json in the Hugging Face Trainer's layout."""
    history = [{"step": 10 * (i + 1), "loss": loss, "learning_rate": 1e-4} for i, loss in enumerate(losses)]
    history += [{"step": 10 * (i + 1), "eval_loss": loss} for i, loss in enumerate(eval_losses)]
    history.append({"step": 10 * len(losses), "train_loss": sum(losses) / len(losses), "train_runtime": 1.0})
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(
        json.dumps({"global_step": 10 * len(losses), "log_history": history})
    )


def test_curves_reads_runs_and_their_last_checkpoint(tmp_path, capsys):
    trainer_state(tmp_path / "ina-0.1", [2.0, 1.5, 1.2], [1.6, 1.3])
    trainer_state(tmp_path / "ina-0.9" / "checkpoint-10", [2.1], [])
    trainer_state(tmp_path / "ina-0.9" / "checkpoint-30", [2.1, 1.9, 1.8], [1.9])
    out = tmp_path / "plots"
    assert (
        main(["viz", "curves", str(tmp_path / "ina-0.1"), str(tmp_path / "ina-0.9"), "--out", str(out)]) == 0
    )
    assert sorted(p.name for p in out.iterdir()) == sorted(CURVES_FILES)
    runs = json.loads((out / "curves.json").read_text())
    assert [r["name"] for r in runs] == ["ina-0.1", "ina-0.9"]
    assert [p["loss"] for p in runs[0]["train"]] == [2.0, 1.5, 1.2] and [
        p["loss"] for p in runs[0]["eval"]
    ] == [1.6, 1.3]
    assert runs[1]["path"].endswith("checkpoint-30/trainer_state.json") and len(runs[1]["train"]) == 3
    read_png(out / "curves.png")
    assert "ina-0.9: 3 train / 1 validation points" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--layers", "5"], "layer 5 is out of range: this model has 2 layers"),
        (["--layers", "1,x"], "--layers must be comma-separated integers"),
        (["--adapter", "nowhere=/no/such/folder"], "no such folder"),
        (["--adapter", "lora=/no/such/folder"], "part of PEFT's parameter prefix 'lora_'"),
        (["--adapter", "rho0.3=/no/such/folder"], "NAME must use letters, digits"),
    ],
)
def test_attention_input_errors(saved, tmp_path, capsys, extra, message):
    args = [
        "viz",
        "attention",
        "--base_model",
        str(saved / "base"),
        "--text",
        TEXT,
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(args + extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_adapter_of_another_model_is_refused(saved, tmp_path, capsys):
    args = [
        "viz",
        "attention",
        "--base_model",
        str(saved / "base"),
        "--text",
        TEXT,
        "--out",
        str(tmp_path / "o"),
    ]
    llama = ina.InAConfig(r=4, target_modules=["q_proj"], inhibition=0.3, task_type="SEQ_CLS")
    get_peft_model(tiny_model("llama", head="seq-cls"), llama).save_pretrained(tmp_path / "llama")
    assert main([*args, "--adapter", f"x={tmp_path / 'llama'}"]) == 2
    assert "cannot load it onto --base_model" in capsys.readouterr().err
    # No task_type, so the bare BertModel loads, but the tensors are named "...bert.encoder...": PEFT would
    # silently load nothing and run the base model.
    untyped = ina.InAConfig(r=4, target_modules=["query"], inhibition=0.3)
    get_peft_model(tiny_model("bert"), untyped).save_pretrained(tmp_path / "bare")
    assert main([*args, "--adapter", f"x={tmp_path / 'bare'}"]) == 2
    assert "trained on another base model or head" in capsys.readouterr().err


def test_curves_without_trainer_state_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["viz", "curves", str(tmp_path / "empty"), "--out", str(tmp_path)]) == 2
    assert "has no trainer_state.json" in capsys.readouterr().err
