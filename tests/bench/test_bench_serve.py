"""`ina bench serve`: load on `ina serve`, started as a child process on a tiny model (a smoke test)."""

import json
import subprocess
import sys

import pytest

from ina.bench.serving import ServerStartError, wait_for_health
from ina.cli import main


def test_serve_bench_on_a_tiny_server_writes_one_row_per_level(tmp_path, capsys):
    path = tmp_path / "serve.json"
    argv = ["bench", "serve", "--tiny", "--concurrency", "1", "2", "--requests_per_client", "1"]
    assert main([*argv, "--max_tokens", "2", "--num_threads", "1", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("models ['tiny-llama', 'ina03', 'ina09'], max_tokens 2, 1 requests per client")
    rows = json.loads(path.read_text())
    assert [(row["clients"], row["requests"]) for row in rows] == [(1, 1), (2, 2)]
    assert all(row["requests_per_s"] > 0 and row["ttft_p50_ms"] > 0 for row in rows)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tiny", "--concurrency", "0"], "--concurrency must be one or more numbers ≥ 1"),
        (["--tiny", "--max_tokens", "0"], "--max_tokens must be ≥ 1; got 0"),
        (["--base_model", "x", "--adapter", "no-equals-sign-and-no-folder"], "--adapter"),
    ],
)
def test_serve_bench_rejects_bad_flags_before_starting_a_server(flags, message, capsys):
    assert main(["bench", "serve", *flags]) == 2
    assert message in capsys.readouterr().err


def test_a_server_that_exits_is_reported_with_its_output(tmp_path):
    log = tmp_path / "serve.log"
    log.write_text("ina serve: could not load --base_model\n")
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(ServerStartError, match=r"exited with code 3[^\n]*\n.*could not load"):
        wait_for_health("http://127.0.0.1:9", process, log, timeout=60)


def test_an_unreachable_url_is_one_line_naming_the_flag(capsys):
    import socket

    with socket.socket() as unused:  # a loopback port nobody listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    assert main(["bench", "serve", "--url", f"http://127.0.0.1:{port}", "--concurrency", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--url" in err and "no server answers there" in err
