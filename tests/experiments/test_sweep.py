"""`ina sweep` end to end: two ratios × two seeds on a tiny model, its table and plot, and resuming."""

import csv
import json
import math

import pytest

from ina.cli import main
from ina.experiments.sweep import experiment_flags
from ina.experiments.sweep_report import markdown_table, summarise, verdict, write_summaries

FAST = [
    "--num_train_epochs",
    "1",
    "--learning_rate",
    "5e-3",
    "--per_device_train_batch_size",
    "4",
    "--disable_tqdm",
    "True",
    # one thread: on a busy 2-core machine a second torch thread mostly spins
    "--torch_threads",
    "1",
]


def test_sweep_two_ratios_two_seeds_end_to_end(tiny_encoder_dir, sentiment_files, tmp_path, capsys):
    train, dev = sentiment_files
    out = tmp_path / "sweep"
    argv = [
        "sweep",
        "--inhibition",
        "0.3,0",
        "--seeds",
        "1,2",
        "--output_dir",
        str(out),
        "--task_name",
        "sst2",
    ]
    argv += [
        "--model_name_or_path",
        str(tiny_encoder_dir),
        "--train_file",
        str(train),
        "--validation_file",
        str(dev),
        *FAST,
    ]
    assert main(argv) == 0

    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == [f"inhibition{r}-leaky_relu-r4-lr0.005-seed{s}" for r in ("0", "0.3") for s in (1, 2)]
    with open(out / "results.csv") as file:
        rows = list(csv.DictReader(file))
    assert [(row["inhibition"], row["seed"]) for row in rows] == [
        ("0.0", "1"),
        ("0.0", "2"),
        ("0.3", "1"),
        ("0.3", "2"),
    ]
    accuracies = {(row["inhibition"], row["seed"]): float(row["accuracy"]) for row in rows}
    for row in rows:
        record = json.loads((out / "runs" / row["run"] / "result.json").read_text())
        assert record["metrics"]["accuracy"] == float(row["accuracy"])

    table = (out / "results.md").read_text()
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert lines[0] == "| adapter | accuracy | Δ accuracy vs LoRA [95 % CI] | seeds |"
    assert lines[1].startswith("| LoRA (ρ=0) |") and lines[2].startswith("| InA ρ=0.3 |")  # LoRA first
    lora = [accuracies[("0.0", s)] * 100 for s in ("1", "2")]
    mean, std = sum(lora) / 2, math.sqrt(sum((v - sum(lora) / 2) ** 2 for v in lora))  # n − 1 = 1
    assert f"{mean:.2f} ± {std:.2f}" in lines[1]
    means = [float(line.split("|")[2].strip(" *").split(" ± ")[0]) for line in lines[1:]]
    for line, value in zip(lines[1:], means, strict=True):
        assert ("**" in line) == (value == max(means))  # the best mean (and only it, ties aside) in bold
    assert "Best mean accuracy" in table
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert table in capsys.readouterr().out

    # Resuming: finished runs are skipped, and a deleted one is redone.
    stamps = {run: (out / "runs" / run / "result.json").stat().st_mtime_ns for run in runs}
    (out / "runs" / runs[0] / "result.json").unlink()
    assert main(argv) == 0
    log = capsys.readouterr().out
    assert log.count("finished earlier, skipped") == 3
    for run in runs[1:]:
        assert (out / "runs" / run / "result.json").stat().st_mtime_ns == stamps[run]
    assert (out / "runs" / runs[0] / "result.json").exists()

    # Speed settings are not the experiment: resuming with another --torch_threads skips every finished run.
    assert argv[-2:] == ["--torch_threads", "1"]
    assert main([*argv[:-2], "--torch_threads", "2"]) == 0
    log = capsys.readouterr().out
    assert log.count("finished earlier, skipped") == 4
    assert log.strip().splitlines()[-1] == (
        f"wrote results.csv, results.md, results.png and each run's folder (runs/) to {out.resolve()}"
    )

    # Other experiment flags in the same folder would reuse runs of a different experiment: refused.
    assert main([*argv, "--max_seq_length", "16"]) == 2
    assert "pass a new --output_dir" in capsys.readouterr().err


def test_table_marks_best_and_labels_lora():
    records = [
        {
            "inhibition": rho,
            "activation": "leaky_relu",
            "r": 4,
            "seed": seed,
            "metrics": {"accuracy": acc, "f1": f1},
        }
        for rho, seed, acc, f1 in [
            (0.1, 1, 0.80, 0.70),
            (0.1, 2, 0.84, 0.74),
            (0.0, 1, 0.82, 0.80),
            (0.0, 2, 0.82, 0.78),
        ]
    ]
    names, rows = summarise(records, "glue")
    table = markdown_table(names, rows)
    assert table.splitlines()[2] == "| LoRA (ρ=0) | **82.00 ± 0.00** | **79.00 ± 1.41** | — | 2 |"
    # a tie: both bold; differences −2 and +2 points: mean 0, half-width t(0.975, 1) · 2.83 / √2 = 25.41
    assert (
        table.splitlines()[3]
        == "| InA ρ=0.1 | **82.00 ± 2.83** | 72.00 ± 2.83 | +0.00 [-25.41, +25.41] | 2 |"
    )
    assert verdict(["accuracy"], rows).endswith("It ties with InA ρ=0.1 (82.00): no ratio wins.")
    sentence = verdict(["f1"], rows)
    assert (
        sentence.startswith("Best mean f1: LoRA (ρ=0) (79.00).")
        and "more than one standard deviation" in sentence
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--inhibition", "0,1.2"], "--inhibition ratios must be in [0, 1)"),
        (["--seeds", "one"], "--seeds must be comma-separated integers"),
        (["--activation", "relu6"], "--activation must list"),
        (["--seed", "4"], "give the list to `ina sweep --seeds`"),
    ],
)
def test_sweep_rejects_bad_grids(argv, message, tmp_path, capsys):
    assert main(["sweep", "--output_dir", str(tmp_path / "s"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_speed_flags_are_not_part_of_the_sweep_identity():
    flags = ["--max_seq_length", "16", "--torch_threads", "2", "--disable_tqdm", "--seed_x", "1"]
    flags += ["--dataloader_num_workers=2", "--disable_tqdm", "true", "--overwrite_output_dir"]
    assert experiment_flags(flags) == ["--max_seq_length", "16", "--seed_x", "1"]


def _records(classes):
    return [
        {"inhibition": rho, "activation": "leaky_relu", "r": 4, "seed": seed, "task": "sst2",
         "metrics": {"accuracy": 0.5 + 0.01 * seed}, **({"predicted_classes": c} if c else {})}
        for (rho, seed), c in zip([(0.0, 1), (0.0, 2), (0.9, 1), (0.9, 2)], classes, strict=True)
    ]  # fmt: skip


def test_a_sweep_whose_runs_predict_one_class_says_so(tmp_path):
    both, one = {"negative": 240, "positive": 260}, {"positive": 500}
    write_summaries(tmp_path, _records([one, one, one, one]), "glue")
    text = (tmp_path / "results.md").read_text()
    assert "**Warning: every run of this sweep (4) predicts one class (positive)" in text.splitlines()[2]
    write_summaries(tmp_path, _records([both, both, one, one]), "glue")
    text = (tmp_path / "results.md").read_text()
    assert "**Warning: 2 of 4 runs predict one class (positive)" in text
    assert "InA ρ=0.9 (leaky_relu, r=4): seed 1, seed 2" in text
    for classes in ([both] * 4, [None] * 4):  # runs that learnt, or records without the field
        write_summaries(tmp_path, _records(classes), "glue")
        assert "Warning" not in (tmp_path / "results.md").read_text()
