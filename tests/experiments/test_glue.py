"""`ina glue` end to end on a tiny model, GLUE's file layouts, and errors raised before training."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

import ina
from ina.cli import main
from ina.experiments.common import ExperimentError, load_tokenizer
from ina.experiments.glue_data import check_rows, get_task, read_rows, vader_rows

FAST = [
    "--num_train_epochs",
    "1",
    "--per_device_train_batch_size",
    "4",
    "--disable_tqdm",
    "True",
    "--seed",
    "3",
    # one thread: on a busy 2-core machine a second torch thread mostly spins
    "--torch_threads",
    "1",
]


def test_glue_trains_saves_classifier_and_reloads(tiny_encoder_dir, sentiment_files, tmp_path):
    train, dev = sentiment_files
    out = tmp_path / "run"
    argv = [
        "glue",
        "--task_name",
        "sst2",
        "--model_name_or_path",
        str(tiny_encoder_dir),
        "--output_dir",
        str(out),
    ]
    argv += [
        "--train_file",
        str(train),
        "--validation_file",
        str(dev),
        "--inhibition",
        "0.3",
        "--lora_r",
        "2",
    ]
    threads = torch.get_num_threads()
    code = main([*argv, *FAST])
    assert code == 0
    assert torch.get_num_threads() == threads  # --torch_threads is restored afterwards
    record = json.loads((out / "result.json").read_text())
    assert set(record["metrics"]) == {"accuracy"} and 0 <= record["metrics"]["accuracy"] <= 1
    assert (record["inhibition"], record["r"], record["seed"], record["train_samples"]) == (0.3, 2, 3, 24)
    assert json.loads((out / "eval_results.json").read_text()) == {
        "eval_accuracy": record["metrics"]["accuracy"]
    }
    config = ina.read_adapter_config(out)
    assert (config.inhibition, config.r, sorted(config.target_modules)) == (0.3, 2, ["key", "query", "value"])
    weights = load_file(out / "adapter_model.safetensors")
    assert any("classifier" in key for key in weights), (
        "the trained classifier head must be saved with the adapter"
    )
    # Reloaded adapter + head reproduce the logits that gave the saved accuracy's predictions.
    base = AutoModelForSequenceClassification.from_pretrained(tiny_encoder_dir)
    reloaded = ina.load_adapter(base, out).eval()
    ids = torch.tensor([[5, 9, 14, 20]])
    head = {k: v for k, v in weights.items() if "classifier" in k and k.endswith("weight")}
    trained_head = next(iter(head.values()))
    reloaded_head = [
        p
        for n, p in reloaded.named_parameters()
        if "classifier" in n and n.endswith("weight") and "modules_to_save" in n
    ]
    assert torch.equal(reloaded_head[0].detach(), trained_head)
    assert reloaded(ids).logits.shape == (1, 2)


def test_glue_tsv_layouts(tmp_path):
    mrpc = tmp_path / "mrpc.tsv"
    mrpc.write_text(
        "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tHe said so .\tHe told us so .\n0\t3\t4\tA cat .\tA dog .\n"
    )
    rows = check_rows(read_rows(mrpc, get_task("mrpc")), get_task("mrpc"), "mrpc.tsv")
    assert rows == [
        {"sentence1": "He said so .", "sentence2": "He told us so .", "label": 1},
        {"sentence1": "A cat .", "sentence2": "A dog .", "label": 0},
    ]
    cola = tmp_path / "cola.tsv"  # GLUE's CoLA files have no header
    cola.write_text("gj04\t1\t\tOur friends won't buy this analysis.\ngj04\t0\t*\tThey drank the pub.\n")
    assert [r["label"] for r in check_rows(read_rows(cola, get_task("cola")), get_task("cola"), "cola")] == [
        1,
        0,
    ]
    mnli = tmp_path / "dev_matched.tsv"
    mnli.write_text(
        "index\tsentence1\tsentence2\tgold_label\n0\tA man sleeps.\tA person rests.\tentailment\n1\tIt rains.\tIt is dry.\tcontradiction\n"
    )
    rows = check_rows(read_rows(mnli, get_task("mnli")), get_task("mnli"), "mnli")
    assert rows[1] == {"premise": "It rains.", "hypothesis": "It is dry.", "label": 2}  # hub order: e, n, c
    stsb = tmp_path / "stsb.jsonl"
    stsb.write_text('{"sentence1": "a", "sentence2": "b", "label": 3.8}\n')
    assert check_rows(read_rows(stsb, get_task("stsb")), get_task("stsb"), "stsb")[0]["label"] == 3.8


def test_vader_split_is_fixed_by_seed_and_drops_neutral():
    first, again, other = vader_rows(split_seed=0), vader_rows(split_seed=0), vader_rows(split_seed=1)
    assert first == again and first["validation"] != other["validation"]
    assert len(first["train"]) + len(first["validation"]) == 9173  # |rating| ≥ 1 of 10,605
    assert {r["label"] for r in first["train"]} == {0, 1}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--task_name", "imdb"], "--task_name must be one of"),
        (
            ["--task_name", "mrpc", "--train_file", "{train}", "--validation_file", "{dev}"],
            "needs a column 'sentence1'",
        ),
        (
            ["--task_name", "cola", "--train_file", "{bad}", "--validation_file", "{dev}"],
            "label '2' is outside task 'cola'",
        ),
        (
            [
                "--task_name",
                "sst2",
                "--train_file",
                "{train}",
                "--validation_file",
                "{dev}",
                "--no_such_flag",
                "1",
            ],
            "--no_such_flag",
        ),
        (
            [
                "--task_name",
                "sst2",
                "--train_file",
                "{train}",
                "--validation_file",
                "{dev}",
                "--inhibition",
                "1.5",
            ],
            "inhibition",
        ),
        (["--task_name", "sst2", "--train_file", "{train}"], "--validation_file"),
    ],
)
def test_bad_input_fails_before_training(argv, message, tiny_encoder_dir, sentiment_files, tmp_path, capsys):
    train, dev = sentiment_files
    bad = tmp_path / "bad.csv"
    bad.write_text("sentence,label\nfine,1\nodd,2\n")
    argv = [a.format(train=train, dev=dev, bad=bad) for a in argv]
    code = main(
        ["glue", "--model_name_or_path", str(tiny_encoder_dir), "--output_dir", str(tmp_path / "o"), *argv]
    )
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o" / "result.json").exists()


def test_model_without_tokenizer_is_named(tmp_path, sentiment_files):
    from ina.testing import tiny_model

    tiny_model("bert").save_pretrained(tmp_path / "no-tokenizer")
    train, dev = sentiment_files
    with pytest.raises(ExperimentError, match=r"has no tokenizer files.*--tokenizer_name"):
        load_tokenizer(str(tmp_path / "no-tokenizer"))
    code = main(
        [
            "glue",
            "--model_name_or_path",
            str(tmp_path / "no-tokenizer"),
            "--train_file",
            str(train),
            "--validation_file",
            str(dev),
        ]
    )
    assert code == 2


def _mnli_tsv(path, rows):
    lines = ["index\tpromptID\tsentence1\tsentence2\tgold_label"]
    labels = ["entailment", "neutral", "contradiction"]
    lines += [
        f"{i}\t{i}\tA man plays music number {i} .\tSomeone plays {i % 3} .\t{labels[i % 3]}"
        for i in range(rows)
    ]
    path.write_text("\n".join(lines) + "\n")


def test_mnli_from_a_glue_folder_reports_matched_and_mismatched(tiny_encoder_dir, tmp_path):
    folder = tmp_path / "MNLI"
    folder.mkdir()
    _mnli_tsv(folder / "train.tsv", 12)
    _mnli_tsv(folder / "dev_matched.tsv", 6)
    _mnli_tsv(folder / "dev_mismatched.tsv", 9)
    out = tmp_path / "mnli"
    argv = [
        "glue",
        "--task",
        "mnli",
        "--model_name_or_path",
        str(tiny_encoder_dir),
        "--data_dir",
        str(folder),
    ]
    assert (
        main([*argv, "--output_dir", str(out), *FAST]) == 2
    )  # the tiny model's head has 2 outputs, MNLI needs 3
    assert main([*argv, "--output_dir", str(out), "--ignore_mismatched_sizes", *FAST]) == 0
    record = json.loads((out / "result.json").read_text())
    assert set(record["metrics"]) == {"accuracy", "accuracy_mismatched"}
    assert record["eval_samples"] == {"validation_matched": 6, "validation_mismatched": 9}
    # a multiple of 1/6 and of 1/9: the two sets really were scored separately
    assert round(record["metrics"]["accuracy"] * 6, 6).is_integer()
    assert round(record["metrics"]["accuracy_mismatched"] * 9, 6).is_integer()


def test_stsb_is_a_regression_with_pearson_and_spearman(tiny_encoder_dir, tmp_path):
    for name, rows in (("train.jsonl", 12), ("dev.jsonl", 8)):
        lines = [
            json.dumps({"sentence1": f"a cat {i}", "sentence2": f"a dog {i}", "label": (i % 6) * 0.8})
            for i in range(rows)
        ]
        (tmp_path / name).write_text("\n".join(lines))
    out = tmp_path / "stsb"
    argv = ["glue", "--task", "stsb", "--model_name_or_path", str(tiny_encoder_dir), "--output_dir", str(out)]
    argv += ["--train_file", str(tmp_path / "train.jsonl"), "--validation_file", str(tmp_path / "dev.jsonl")]
    assert main([*argv, "--ignore_mismatched_sizes", *FAST]) == 0
    record = json.loads((out / "result.json").read_text())
    assert set(record["metrics"]) == {"pearson", "spearman"}
    assert all(-1 <= value <= 1 for value in record["metrics"].values())
    base = AutoModelForSequenceClassification.from_pretrained(
        tiny_encoder_dir, num_labels=1, ignore_mismatched_sizes=True
    )
    assert ina.load_adapter(base, out)(torch.tensor([[5, 6, 7]])).logits.shape == (1, 1)


def test_decoder_with_a_classification_head_and_no_pad_token(sentiment_files, tmp_path):
    from ina.testing import tiny_model, tiny_tokenizer

    folder = tmp_path / "tiny-llama"
    tiny_model("llama", head="seq-cls", pad_token_id=None).save_pretrained(folder)
    tokenizer = tiny_tokenizer()
    tokenizer.pad_token = None  # like GPT-2 / LLaMA tokenizers
    tokenizer.save_pretrained(folder)
    train, dev = sentiment_files
    out = tmp_path / "llama"
    argv = ["glue", "--task", "sst2", "--model_name_or_path", str(folder), "--output_dir", str(out)]
    assert main([*argv, "--train_file", str(train), "--validation_file", str(dev), *FAST]) == 0
    config = ina.read_adapter_config(out)
    assert sorted(config.target_modules) == [
        "k_proj",
        "q_proj",
        "v_proj",
    ]  # the architecture's attention Q/K/V
    assert "accuracy" in json.loads((out / "result.json").read_text())["metrics"]
