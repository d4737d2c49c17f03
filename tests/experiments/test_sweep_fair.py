"""Fair comparisons in `ina sweep`: a learning-rate grid chosen on dev, extra test files, paired intervals,
validation curves during training, and the local backend."""

import csv
import json
import math
import statistics

import pytest
from scipy import stats

from ina.cli import main
from ina.experiments.backends import Job, run_local
from ina.experiments.sweep_report import summarise
from ina.experiments.sweep_stats import paired_difference, select_on_dev, t_interval

FAST = ["--num_train_epochs", "1", "--per_device_train_batch_size", "4", "--disable_tqdm", "True"]
FAST += ["--torch_threads", "1"]


def _record(rho, rate, seed, dev, validation):
    return {
        "experiment": "glue",
        "task": "sst2",
        "inhibition": rho,
        "activation": "leaky_relu",
        "r": 4,
        "learning_rate": rate,
        "seed": seed,
        "metrics": {"accuracy": validation},
        "dev_metrics": {"accuracy": dev},
    }


# Planted: LoRA is best on dev at 1e-3, ρ = 0.9 at 1e-2; validation scores differ from dev on purpose,
# so reporting dev (or the best validation) instead of the dev-chosen runs' validation would show.
PLANTED = [
    _record(rho, rate, seed, dev + 0.01 * seed, val + 0.01 * seed)
    for rho, rate, dev, val in [
        (0.0, 1e-3, 0.80, 0.70),
        (0.0, 1e-2, 0.60, 0.90),
        (0.9, 1e-3, 0.50, 0.95),
        (0.9, 1e-2, 0.75, 0.65),
    ]
    for seed in (1, 2, 3)
]


def test_select_on_dev_picks_each_ratios_rate_and_reports_its_validation():
    kept, choices = select_on_dev(PLANTED)
    assert choices[("leaky_relu", 4, 0.0)]["learning_rate"] == 1e-3
    assert choices[("leaky_relu", 4, 0.9)]["learning_rate"] == 1e-2
    assert choices[("leaky_relu", 4, 0.9)]["dev"] == {1e-3: pytest.approx(0.52), 1e-2: pytest.approx(0.77)}
    _, rows = summarise(kept, "glue")
    assert [(row["inhibition"], row["learning_rate"]) for row in rows] == [(0.0, 1e-3), (0.9, 1e-2)]
    assert rows[0]["accuracy"][0] == pytest.approx(72.0) and rows[1]["accuracy"][0] == pytest.approx(67.0)
    # paired by seed: (0.65 + 0.01 s) − (0.70 + 0.01 s) = −5 points for every seed: a zero-width interval
    difference = rows[1]["difference"]
    assert difference["seeds"] == 3 and difference["mean"] == pytest.approx(-5.0)
    assert difference["low"] == pytest.approx(-5.0) and difference["high"] == pytest.approx(-5.0)


def test_planted_runs_go_through_the_sweep_command(tmp_path, capsys):
    """Finished runs are read back (resume), chosen on dev, and the table shows each ratio's chosen rate."""
    out = tmp_path / "sweep"
    for record in PLANTED:
        name = f"inhibition{record['inhibition']:g}-leaky_relu-r4-lr{record['learning_rate']:g}-seed{record['seed']}"
        (out / "runs" / name).mkdir(parents=True)
        (out / "runs" / name / "result.json").write_text(json.dumps(record))
    argv = ["sweep", "--inhibition", "0,0.9", "--learning_rate", "1e-3,1e-2", "--select_on", "dev"]
    assert main([*argv, "--output_dir", str(out)]) == 0
    assert capsys.readouterr().out.count("finished earlier, skipped") == 12
    table = (out / "results.md").read_text()
    assert "| LoRA (ρ=0) | 0.001 | **72.00 ± 1.00** | — | 3 |" in table
    assert "| InA ρ=0.9 | 0.01 | 67.00 ± 1.00 | -5.00 [-5.00, -5.00] | 3 |" in table
    assert "worse than LoRA beyond noise: InA ρ=0.9" in table
    assert "| InA ρ=0.9 | leaky_relu | 4 | 0.52 | **0.77** |" in table  # mean dev per rate
    with open(out / "results.csv") as file:
        assert len(list(csv.DictReader(file))) == 12  # every run, chosen or not


def test_t_interval_matches_scipy():
    sample = [1.5, -0.25, 2.0, 0.75, 3.0]
    mean, low, high = t_interval(sample)
    reference = stats.ttest_1samp(sample, 0.0).confidence_interval(0.95)
    assert mean == pytest.approx(statistics.fmean(sample))
    assert (low, high) == (pytest.approx(reference.low), pytest.approx(reference.high))
    # by hand: t(0.975, 4) = 2.7764451, sample std 1.2323758 (squares 6.075 / 4), n = 5
    assert high - mean == pytest.approx(2.7764451 * 1.2323758 / math.sqrt(5), rel=1e-6)
    assert math.isnan(t_interval([1.0])[1])

    lora = [0.80, 0.82, 0.79, 0.85]
    ina = [0.81, 0.86, 0.80, 0.84]
    seeds = (3, 1, 2, 4)
    runs = [{"seed": s, "metrics": {"acc": v}} for s, v in zip(seeds, ina, strict=True)]
    baseline = [{"seed": s, "metrics": {"acc": v}} for s, v in zip(seeds, lora, strict=True)][::-1]
    paired = paired_difference(runs, baseline, "acc", scale=100.0)  # paired by seed, not by position
    reference = stats.ttest_rel([100 * v for v in ina], [100 * v for v in lora]).confidence_interval(0.95)
    assert paired["seeds"] == 4
    assert (paired["low"], paired["high"]) == (pytest.approx(reference.low), pytest.approx(reference.high))


def test_learning_rate_grid_test_files_and_curves_end_to_end(tiny_encoder_dir, sentiment_csv, tmp_path):
    train = sentiment_csv(tmp_path / "train.csv", 40, 0)
    validation = sentiment_csv(tmp_path / "validation.csv", 12, 1)
    # the validation rows with every label flipped: a binary classifier's accuracy there is 1 − accuracy
    with open(validation) as file:
        rows = list(csv.DictReader(file))
    flipped = tmp_path / "flipped.csv"
    with open(flipped, "w", newline="") as file:
        writer = csv.DictWriter(file, ["sentence", "label"])
        writer.writeheader()
        writer.writerows({"sentence": r["sentence"], "label": 1 - int(r["label"])} for r in rows)
    out = tmp_path / "sweep"
    argv = ["sweep", "--inhibition", "0,0.3", "--seeds", "1,2", "--learning_rate", "1e-4,5e-3"]
    argv += ["--select_on", "dev", "--dev_fraction", "0.25", "--output_dir", str(out), "--task_name", "sst2"]
    argv += ["--model_name_or_path", str(tiny_encoder_dir), "--train_file", str(train)]
    argv += ["--validation_file", str(validation), "--test_file", f"same={validation}"]
    argv += ["--test_file", f"flipped={flipped}", "--eval_steps", "4", *FAST]
    assert main(argv) == 0

    records = {}
    for folder in sorted((out / "runs").iterdir()):
        record = json.loads((folder / "result.json").read_text())
        records[folder.name] = record
        metrics = record["metrics"]
        assert metrics["same/accuracy"] == metrics["accuracy"]
        assert metrics["flipped/accuracy"] == pytest.approx(1 - metrics["accuracy"])
        assert record["train_samples"] == 30 and len(record["dev_metrics"]) == 1  # 10 of 40 rows held out
        assert record["steps"] == 8  # 30 rows, batch 4, one epoch: the same for every rate and ratio
        assert [point["step"] for point in record["curve"]] == [4, 8]
        assert record["curve"][-1]["accuracy"] == metrics["accuracy"]  # the last curve point: the final model
        state = json.loads((folder / "trainer_state.json").read_text())
        assert [e["step"] for e in state["log_history"] if "eval_loss" in e] == [4, 8]
    assert len(records) == 8

    # each ratio's reported runs: those of the rate with the best mean dev accuracy (ties: the smaller)
    table = (out / "results.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| adapter"))
    assert header.split(" | ")[1:5] == ["lr (chosen on dev)", "accuracy", "same/accuracy", "flipped/accuracy"]
    for rho, label in (("0", "LoRA (ρ=0)"), ("0.3", "InA ρ=0.3")):
        dev = {
            rate: statistics.fmean(
                records[f"inhibition{rho}-leaky_relu-r4-lr{rate}-seed{s}"]["dev_metrics"]["accuracy"]
                for s in (1, 2)
            )
            for rate in ("0.0001", "0.005")
        }
        chosen = max(sorted(dev, key=float), key=lambda rate: dev[rate])
        validation_mean = statistics.fmean(
            100 * records[f"inhibition{rho}-leaky_relu-r4-lr{chosen}-seed{s}"]["metrics"]["accuracy"]
            for s in (1, 2)
        )
        line = next(line for line in table.splitlines() if line.startswith(f"| {label} |"))
        assert line.split(" | ")[1] == f"{float(chosen):g}"
        assert line.split(" | ")[2].strip("*").startswith(f"{validation_mean:.2f}")
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_viz_curves_reads_a_sweep_run(tiny_encoder_dir, sentiment_files, tmp_path):
    from ina.viz.curves import read_run

    train, validation = sentiment_files
    out = tmp_path / "sweep"
    argv = ["sweep", "--inhibition", "0", "--seeds", "1", "--output_dir", str(out), "--task_name", "sst2"]
    argv += ["--model_name_or_path", str(tiny_encoder_dir), "--train_file", str(train)]
    argv += ["--validation_file", str(validation), "--eval_steps", "2", "--logging_steps", "2", *FAST]
    assert main(argv) == 0
    run = read_run(next((out / "runs").iterdir()))
    assert [p["step"] for p in run["eval"]] == [2, 4, 6] and [p["step"] for p in run["train"]] == [2, 4, 6]


def test_run_local_skips_finished_jobs_and_keeps_order(tmp_path):
    done = tmp_path / "runs" / "b"
    done.mkdir(parents=True)
    (done / "result.json").write_text(json.dumps({"metrics": {"accuracy": 0.5}, "from": "disk"}))
    ran = []

    def run_one(argv):
        ran.append(argv)
        return {"metrics": {"accuracy": float(argv[1])}}

    jobs = [
        Job(name, ["--x", value], tmp_path / "runs" / name)
        for name, value in (("a", "0.1"), ("b", "0.2"), ("c", "0.3"))
    ]
    lines = []
    records = run_local(jobs, run_one, lines.append)
    assert list(records) == ["a", "b", "c"] and ran == [["--x", "0.1"], ["--x", "0.3"]]
    assert records["b"]["from"] == "disk" and "finished earlier, skipped" in lines[2]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--learning_rate", "fast"], "--learning_rate must be comma-separated numbers"),
        (["--learning_rate", "1e-3,-1"], "--learning_rate values must be positive"),
        (["--select_on", "dev", "--dev_fraction", "1.5"], "--dev_fraction must be a share in (0, 1)"),
        (["--dev_fraction", "0.2"], "--dev_fraction 0.2 needs --select_on dev"),
        (["--test_file", "nopath"], "--test_file must be NAME=PATH"),
        (["--test_file", "ood=/no/such.csv"], "--test_file 'ood=/no/such.csv': '/no/such.csv' is not a file"),
    ],
)
def test_sweep_rejects_bad_fair_flags(argv, message, tmp_path, capsys):
    code = main(["sweep", "--output_dir", str(tmp_path / "s"), "--seeds", "1", "--inhibition", "0", *argv])
    assert code == 2
    assert message in capsys.readouterr().err
