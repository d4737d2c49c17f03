"""`ina bench`'s decoding on InA's inference path, and `ina bench serve --adapters` (smoke tests, not benchmarks)."""

import json

import pytest
import torch

from ina.bench.settings import BenchSettings
from ina.bench.variants import Bench
from ina.cli import main


def test_ina_fast_decodes_on_the_prepared_path_with_the_reference_answers():
    bench = Bench(BenchSettings(preset="tiny", targets="all-linear", batch=1, seq=16, threads=1))
    with torch.no_grad():
        for _, _, layer in bench.adapted:  # a non-zero adapter, so the branch shows in the tokens
            for matrix in (layer.lora_A["inhibited"].weight, layer.lora_B["inhibited"].weight):
                matrix.normal_(0, 0.5)
    bench.model.eval()
    layer = bench.adapted[0][2]
    tokens = {}
    with torch.no_grad():
        for name in ("base", "ina-reference", "ina-fast"):
            with bench.decoding(name):
                assert ("forward" in layer.__dict__) == (name == "ina-fast")  # routed only while decoding
                tokens[name] = bench.model.generate(
                    bench.input_ids[:1, :8], max_new_tokens=6, do_sample=False, pad_token_id=0
                )
    assert "forward" not in layer.__dict__
    assert torch.equal(tokens["ina-fast"], tokens["ina-reference"])
    assert not torch.equal(tokens["ina-fast"], tokens["base"])


def test_bench_reports_decoding_against_lora_in_wall_and_cpu_time(tmp_path, capsys):
    path = tmp_path / "bench.json"
    argv = ["bench", "--preset", "tiny", "--batch", "1", "--seq", "16", "--warmup", "0", "--steps", "1"]
    argv += ["--variants", "lora,ina-fast", "--decode", "--decode_tokens", "3", "--decode_rounds", "1"]
    assert main([*argv, "--json", str(path)]) == 0
    assert "| decode ms/token [IQR] | × base | × LoRA | decode CPU ms | × LoRA |" in capsys.readouterr().out
    report = json.loads(path.read_text())
    assert report["ratios"]["lora"]["decode_cpu_vs_lora"] == 1.0
    assert report["ratios"]["ina-fast"]["decode_vs_lora"] > 0
    assert report["variants"]["ina-fast"]["decode_cpu_ms_per_token"]["n"] == 2


@pytest.mark.slow  # starts `ina serve` as a child process: about 30 s on the shared 2-core machine
def test_serve_bench_compares_numbers_of_adapters_in_alternating_rounds(tmp_path, capsys):
    path = tmp_path / "adapters.json"
    argv = [
        "bench",
        "serve",
        "--tiny",
        "--adapters",
        "1",
        "2",
        "--concurrency",
        "2",
        "--requests_per_client",
        "1",
    ]
    argv += ["--max_tokens", "2", "--repeats", "2", "--num_threads", "1", "--json", str(path)]
    assert main(argv) == 0
    assert "| clients | adapters in use | req/s |" in capsys.readouterr().out
    report = json.loads(path.read_text())
    assert report["models"] == ["tiny-llama", "adapter1", "adapter2"]
    assert [(run["repeat"], run["adapters"]) for run in report["runs"]] == [(0, 1), (0, 2), (1, 2), (1, 1)]
    assert [(row["clients"], row["adapters"]) for row in report["summary"]] == [(2, 1), (2, 2)]
    first, second = report["summary"]
    assert first["tokens_per_s_vs_first"] == 1.0
    assert second["tokens_per_s_vs_first"] > 0 and second["tokens_per_s"] > 0
    assert all(run["tokens"] == 4 and run["server_cpu_ms_per_token"] >= 0 for run in report["runs"])


def test_serve_bench_adapter_flags_are_checked_before_starting_a_server(capsys):
    assert main(["bench", "serve", "--tiny", "--adapters", "0"]) == 2
    assert "--adapters must be one or more numbers ≥ 1; got [0]" in capsys.readouterr().err
    assert main(["bench", "serve", "--url", "http://127.0.0.1:9", "--peft_path"]) == 2
    assert "--peft_path sets the environment" in capsys.readouterr().err
