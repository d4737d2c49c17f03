"""The engine's mixed-adapter batches on InA's inference path (ina.core.gathered) equal PEFT's per-adapter path."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ina import InAConfig
from ina.foundation.harness import peft_model
from ina.serve.engine import Engine, SamplingParams
from ina.serve.engine.batch import Row
from ina.serve.engine.detokenize import TextStream
from ina.serve.engine.types import Generation
from ina.testing import tiny_model, tiny_tokenizer

# name: (r, ρ, activation, targets): ranks 4/8/16, the gate off and on, embeddings, different layers
ADAPTERS = {
    "lora4": (4, 0.0, "leaky_relu", ["q_proj", "v_proj"]),
    "ina8": (8, 0.3, "leaky_relu", ["embed_tokens", "q_proj", "v_proj", "up_proj"]),
    "ina16": (16, 0.9, "gelu", ["q_proj", "k_proj", "down_proj"]),
}
PROMPTS = ["the cat sat", "a dog ran far away", "one", "colours of the sea and sky"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("gathered")
    base = root / "tiny-llama"
    tiny_model("llama").save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    adapters = {}
    for seed, (name, (r, rho, activation, targets)) in enumerate(ADAPTERS.items(), start=1):
        config = InAConfig(
            r=r,
            lora_alpha=2 * r,
            target_modules=targets,
            inhibition=rho,
            activation=activation,
            task_type="CAUSAL_LM",
        )
        model = peft_model(tiny_model("llama"), config)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for key, parameter in model.named_parameters():
                if "lora_" in key:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
        model.save_pretrained(root / name, save_embedding_layers=False)
        adapters[name] = str(root / name)
    return base, adapters


@pytest.fixture(scope="module")
def engines(files: tuple[Path, dict[str, str]]) -> Iterator[dict[str, Engine]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    base, adapters = files
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INA_GATHERED", "0")
        peft_engine = Engine.load(base, adapters, base_model_id="tiny-llama", dtype="float64")
    engines = {
        "gathered": Engine.load(base, adapters, base_model_id="tiny-llama", dtype="float64"),
        "peft": peft_engine,
    }
    yield engines
    for engine in engines.values():
        engine.shutdown()
    torch.set_num_threads(threads)


def test_the_engine_prepares_its_adapters_once_unless_switched_off(engines: dict[str, Engine]) -> None:
    assert engines["gathered"].runner.prepared is not None
    assert engines["gathered"].runner.prepared.adapters == list(ADAPTERS)
    assert engines["peft"].runner.prepared is None


def test_prefill_logits_of_a_mixed_batch_equal_peft(engines: dict[str, Engine]) -> None:
    adapters = ["ina8", "tiny-llama", "ina16", "lora4", "ina8", "ina16"]
    logits = {}
    for path, engine in engines.items():
        rows = []
        for i, model_id in enumerate(adapters):
            prompt = engine.encode_text(PROMPTS[i % len(PROMPTS)])
            generation = Generation(
                model_id, engine.resolve(model_id), prompt, SamplingParams(), lambda e: None, i
            )
            rows.append(Row(generation, 0, TextStream(engine.prompts.decode)))
        with torch.inference_mode():
            batch = engine.runner.prefill(rows)  # the prompts left-padded; rows in the runner's order
        order = torch.tensor([row.generation.tag for row in batch.rows])
        logits[path] = batch.logits[order.argsort()]  # (B, V), in the order asked
    torch.testing.assert_close(logits["gathered"], logits["peft"], rtol=1e-10, atol=1e-10)


def test_greedy_answers_of_concurrent_mixed_requests_equal_peft(engines: dict[str, Engine]) -> None:
    models = ["tiny-llama", *ADAPTERS]
    jobs = [(models[i % len(models)], PROMPTS[i % len(PROMPTS)]) for i in range(16)]
    answers: dict[str, list[list[int]]] = {}
    for path, engine in engines.items():
        results: list[list[int]] = [[] for _ in jobs]

        def ask(i: int, engine: Engine = engine, results: list[list[int]] = results) -> None:
            model, prompt = jobs[i]
            params = SamplingParams(max_tokens=8, temperature=0)
            results[i] = engine.generate(model, engine.encode_text(prompt), params, timeout=120).token_ids

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(jobs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        answers[path] = results
        assert engine.stats()["max_adapters_in_step"] >= 3, "requests for different adapters must share steps"
    assert all(len(tokens) == 8 for tokens in answers["gathered"])
    assert answers["gathered"] == answers["peft"]
    by_model = {jobs[i][0]: answers["gathered"][i] for i in range(len(models))}
    assert len({tuple(tokens) for tokens in by_model.values()}) > 1, "adapters must change the answers"
