"""`ina sweep --backend ray` on a real local Ray instance (2 CPUs): same table as `--backend local`, and a
driver killed mid-sweep resumes without redoing a finished run."""

import csv
import os
import signal
import subprocess
import sys
import time

import pytest

from ina.cli import main

pytest.importorskip("ray")

FAST = [
    *("--num_train_epochs", "1", "--learning_rate", "5e-3", "--per_device_train_batch_size", "4"),
    *("--disable_tqdm", "True", "--torch_threads", "1"),
]


def sweep_argv(out, model, train, dev, *backend):
    return [
        *("sweep", "--inhibition", "0,0.3", "--seeds", "1,2", "--output_dir", str(out), *backend),
        *("--task_name", "sst2", "--model_name_or_path", str(model)),
        *("--train_file", str(train), "--validation_file", str(dev), *FAST),
    ]


def metrics(folder):
    with open(folder / "results.csv") as file:
        return {row["run"]: row["accuracy"] for row in csv.DictReader(file)}


def finished(folder):
    return sorted((folder / "runs").glob("*/result.json"))


def test_ray_sweep_equals_local_and_resumes_after_the_driver_is_killed(
    tiny_encoder_dir, sentiment_files, tmp_path, capsys
):
    train, dev = sentiment_files
    local, distributed = tmp_path / "local", tmp_path / "ray"
    assert main(sweep_argv(local, tiny_encoder_dir, train, dev)) == 0

    ray_flags = ("--backend", "ray", "--resources_per_run", '{"cpu": 1}')
    argv = sweep_argv(distributed, tiny_encoder_dir, train, dev, *ray_flags)
    env = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    driver = subprocess.Popen(
        [sys.executable, "-c", "import sys; from ina_cli import main; sys.exit(main())", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # the driver, its Ray instance and its runs: one process group
        env=env,
    )
    try:
        deadline = time.monotonic() + 240
        while not finished(distributed) and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.2)
        assert finished(distributed), "no run finished under the Ray driver"
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    before = {path: path.stat().st_mtime_ns for path in finished(distributed)}
    capsys.readouterr()

    assert main(argv) == 0
    log = capsys.readouterr().out
    for path, mtime in before.items():
        assert path.stat().st_mtime_ns == mtime  # not redone
        assert f"{path.parent.name}: finished earlier, skipped" in log
    assert len(finished(distributed)) == 4
    assert metrics(distributed) == metrics(local)  # the same numbers to the printed precision


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--resources_per_run", "cpu=1"], "--resources_per_run must be a JSON object"),
        (["--resources_per_run", '{"cpu": -1}'], "--resources_per_run: 'cpu' must be a non-negative"),
        (["--max_retries", "-1"], "--max_retries must be 0 or more"),
    ],
)
def test_bad_ray_flags_are_one_line_before_anything_starts(tmp_path, capsys, flags, needle):
    argv = ["sweep", "--backend", "ray", *flags, "--output_dir", str(tmp_path / "s"), "--task_name", "sst2"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "s" / "runs").exists()
