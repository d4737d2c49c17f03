"""`ina squad` end to end on a tiny QA model: SQuAD v2 JSON in, official scores and predictions out."""

import json

import pytest

import ina
from ina.cli import main
from ina.experiments.squad_data import read_squad, synthetic_squad
from ina.experiments.squad_metrics import squad_v2_scores

FAST = [
    "--num_train_epochs",
    "1",
    "--per_device_train_batch_size",
    "8",
    "--disable_tqdm",
    "True",
    "--seed",
    "1",
    # one thread: on a busy 2-core machine a second torch thread mostly spins
    "--torch_threads",
    "1",
]


def squad_json(path, examples):
    """Write examples in the official nested SQuAD v2 layout (one paragraph per question)."""
    paragraphs = [
        {
            "context": e.context,
            "qas": [
                {
                    "id": e.id,
                    "question": e.question,
                    "answers": [
                        {"text": t, "answer_start": s}
                        for t, s in zip(e.answers, e.answer_starts, strict=True)
                    ],
                    "is_impossible": e.is_impossible,
                }
            ],
        }
        for e in examples
    ]
    path.write_text(
        json.dumps({"version": "v2.0", "data": [{"title": "synthetic", "paragraphs": paragraphs}]})
    )
    return path


def test_squad_v2_end_to_end(tiny_qa_dir, tmp_path):
    examples = synthetic_squad(36, seed=5)
    train, dev = (
        squad_json(tmp_path / "train.json", examples[:24]),
        squad_json(tmp_path / "dev.json", examples[24:]),
    )
    assert read_squad(dev) == examples[24:]
    out = tmp_path / "qa"
    argv = [
        "squad",
        "--model_name_or_path",
        str(tiny_qa_dir),
        "--train_file",
        str(train),
        "--validation_file",
        str(dev),
    ]
    argv += [
        "--version_2_with_negative",
        "--max_seq_length",
        "48",
        "--doc_stride",
        "16",
        "--output_dir",
        str(out),
    ]
    assert main([*argv, "--inhibition", "0.1", *FAST]) == 0
    record = json.loads((out / "result.json").read_text())
    predictions = json.loads((out / "predictions.json").read_text())
    assert set(predictions) == {e.id for e in examples[24:]}
    # the reported scores are the official scorer's on the saved predictions
    rescored = squad_v2_scores({e.id: e.answers for e in examples[24:]}, predictions)
    assert record["metrics"] == {k: rescored[k] for k in record["metrics"]}
    assert {"f1", "exact", "HasAns_f1", "NoAns_f1"} <= set(record["metrics"])
    assert record["train_windows"] > record["train_samples"] == 24  # contexts were split into windows
    config = ina.read_adapter_config(out)
    assert (config.inhibition, config.task_type) == (0.1, "QUESTION_ANS")


def test_squad_v1_data_with_unanswerable_questions_needs_the_flag(tiny_qa_dir, tmp_path, capsys):
    examples = synthetic_squad(10, seed=6, unanswerable_share=0.5)
    path = squad_json(tmp_path / "d.json", examples)
    argv = [
        "squad",
        "--model_name_or_path",
        str(tiny_qa_dir),
        "--train_file",
        str(path),
        "--validation_file",
        str(path),
    ]
    assert main([*argv, "--output_dir", str(tmp_path / "o")]) == 2
    assert "pass --version_2_with_negative" in capsys.readouterr().err


def test_misplaced_answer_offset_is_named(tmp_path):
    examples = synthetic_squad(3, seed=7, unanswerable_share=0.0)
    examples[1].answer_starts[0] += 1
    with pytest.raises(ValueError, match=rf"question '{examples[1].id}'.*fix the offset"):
        read_squad(squad_json(tmp_path / "bad.json", examples))


def test_squad_dev_split_and_test_files(tiny_qa_dir, tmp_path, capsys):
    examples = synthetic_squad(36, seed=5)
    train = squad_json(tmp_path / "train.json", examples[:24])
    validation = squad_json(tmp_path / "validation.json", examples[24:])
    out = tmp_path / "qa"
    argv = ["squad", "--model_name_or_path", str(tiny_qa_dir), "--train_file", str(train)]
    argv += ["--validation_file", str(validation), "--version_2_with_negative", "--max_seq_length", "48"]
    argv += ["--doc_stride", "16", "--output_dir", str(out), "--dev_fraction", "0.25"]
    argv += ["--test_file", f"same={validation}", "--test_file", f"first={train}", *FAST]
    assert main(argv) == 0
    record = json.loads((out / "result.json").read_text())
    metrics = record["metrics"]
    for name in ("f1", "exact", "HasAns_f1", "NoAns_f1"):
        assert metrics[f"same/{name}"] == metrics[name]  # the same file, scored the same way
    assert "first/f1" in metrics and set(record["dev_metrics"]) >= {"f1", "exact"}
    assert record["train_samples"] == 18  # 6 of the 24 training questions held out as dev

    assert main([*argv[: -len(FAST)], "--eval_steps", "2", *FAST]) == 2
    assert "drop --eval_steps" in capsys.readouterr().err
