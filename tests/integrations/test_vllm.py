"""Exact InA in the real vLLM (0.32.0, CPU, float32 SmolLM2): one engine start, every check against PEFT + ina.

Run with ``scripts/test --vllm`` (with the server tests 11-12 minutes on 2 shared cores; needs .venv-vllm).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.integrations.conftest import (
    PROMPTS,
    TEACHER_TEXT,
    PeftReference,
    base_path,
    build_adapters,
    export_adapter,
    run_vllm,
)

pytestmark = pytest.mark.vllm

STEPS = 12  # greedy tokens per request
LOGPROB_TOLERANCE = 1e-4
MAX_LORAS = 4  # as many slots as adapters loaded: base rows share batches with full slots


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Adapters, PEFT's references and vLLM's results of one engine run: {"peft", "vllm", "ids"}."""
    root = tmp_path_factory.mktemp("vllm")
    adapters = build_adapters(root / "adapters")
    export_src, export_dst, export_report, heldout = export_adapter(root / "adapters")
    adapters = {**adapters, "inaexp": export_src, "export": export_dst}
    peft = PeftReference({name: path for name, path in adapters.items() if name != "bad"})
    prompts = [peft.ids(text) for text in PROMPTS]
    teacher = peft.ids(TEACHER_TEXT)
    mixed = [  # base rows, a plain LoRA and two InA adapters with different ρ, in one batch
        {"adapter": adapter, "prompt": prompt, "max_tokens": STEPS}
        for adapter in (None, "plain", "ina03", "ina01")
        for prompt in prompts
    ]
    mixed = mixed[::2] + mixed[1::2]  # interleaved: no adapter's rows are contiguous
    forced = [  # teacher forcing: one one-token request per prefix (prompt_logprobs crashes with LoRA on CPU)
        {"adapter": adapter, "prompt": teacher[:k], "max_tokens": 1, "logprobs": 5}
        for adapter in (None, "plain", "ina03", "ina01")
        for k in range(1, len(teacher))
    ]
    exported = [  # the export's held-out positions, as plain LoRA in vLLM (one one-token request each)
        {"adapter": "export", "prompt": ids[: k + 1], "max_tokens": 1, "logprobs": 1}
        for ids in heldout
        for k in range(len(ids))
    ]
    beside = [prompts[0], prompts[1], prompts[2]]
    spec = {
        "base": base_path(),
        "adapters": {name: str(path) for name, path in adapters.items()},
        "max_lora_rank": 8,
        "max_loras": MAX_LORAS,
        "max_model_len": 512,
        "batches": [
            {"name": "mixed", "requests": mixed},
            {"name": "forced", "requests": forced},
            {"name": "export", "requests": exported},
            # ρ = 0 and its plain LoRA twin, each alone: the same path, so the same bits
            {"name": "rho0", "solo": True, "requests": [
                {"adapter": name, "prompt": prompts[3], "max_tokens": STEPS} for name in ("plain", "ina0")
            ]},
            # LoRA and base rows beside an InA row, then beside a plain LoRA row of the same length
            *({"name": f"beside_{other}", "requests": [
                {"adapter": "plain", "prompt": beside[0], "max_tokens": STEPS},
                {"adapter": other, "prompt": beside[1], "max_tokens": STEPS},
                {"adapter": None, "prompt": beside[2], "max_tokens": STEPS},
            ]} for other in ("ina03", "ina0")),
            {"name": "bad", "expect_error": True, "requests": [
                {"adapter": "bad", "prompt": prompts[0], "max_tokens": 2}
            ]},
            {"name": "after_bad", "requests": [{"adapter": "ina03", "prompt": prompts[0], "max_tokens": STEPS}]},
        ],
    }  # fmt: skip
    result = run_vllm("vllm_engine.py", spec, root)
    return {"peft": peft, "vllm": result["batches"], "prompts": prompts, "teacher": teacher, "mixed": mixed,
            "forced": forced, "adapters": adapters, "heldout": heldout, "export_report": export_report,
            "root": root}  # fmt: skip


def test_mixed_batch_greedy_tokens_equal_peft(engine: dict) -> None:
    """Base rows, a plain LoRA and InA ρ 0.3 / ρ 0.1 (rank pattern, gelu) in one batch: PEFT's greedy tokens."""
    peft = engine["peft"]
    mismatches = []
    for request, got in zip(engine["mixed"], engine["vllm"]["mixed"], strict=True):
        expected = peft.greedy(request["adapter"], request["prompt"], STEPS)
        if got["tokens"] != expected:
            mismatches.append(
                (request["adapter"], peft.tokenizer.decode(request["prompt"]), got["tokens"], expected)
            )
    assert not mismatches, mismatches


def test_every_adapter_changes_the_text(engine: dict) -> None:
    """The check above can fail: each adapter's greedy text differs from the base's and from the others'."""
    by_adapter: dict = {}
    for request, got in zip(engine["mixed"], engine["vllm"]["mixed"], strict=True):
        by_adapter.setdefault(request["adapter"], []).append(tuple(got["tokens"]))
    texts = list(by_adapter.values())
    assert all(a != b for i, a in enumerate(texts) for b in texts[i + 1 :]), by_adapter.keys()


def test_gate_matters(engine: dict) -> None:
    """InA ρ 0.3 in vLLM is not its weights run as plain LoRA (the gate is applied, not dropped)."""
    ungated = PeftReference(
        {"ungated": _as_plain_lora(engine["adapters"]["ina03"], engine["adapters"]["ina03"].parent)}
    )
    prompt = engine["prompts"][0]
    got = next(o for r, o in zip(engine["mixed"], engine["vllm"]["mixed"], strict=True)
               if r["adapter"] == "ina03" and r["prompt"] == prompt)  # fmt: skip
    assert got["tokens"] != ungated.greedy("ungated", prompt, STEPS)


def _as_plain_lora(folder: Path, root: Path) -> Path:
    """``folder``'s weights as a plain LoRA folder (config peft_type LORA, no markers)."""
    import json

    from safetensors.torch import load_file, save_file

    out = root / f"{folder.name}-as-lora"
    if not out.exists():
        out.mkdir()
        tensors = {
            k: v for k, v in load_file(str(folder / "adapter_model.safetensors")).items() if "ina_" not in k
        }
        save_file(tensors, str(out / "adapter_model.safetensors"))
        config = json.loads((folder / "adapter_config.json").read_text())
        for key in ("inhibition", "activation", "negative_slope"):
            config.pop(key)
        (out / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "LORA"}))
    return out


def test_teacher_forced_logprobs_within_1e4_of_peft(engine: dict) -> None:
    """Every prefix of a text, for each adapter and the base: vLLM's top-5 log-probs within 1e-4 of PEFT's."""
    peft, teacher = engine["peft"], engine["teacher"]
    references = {adapter: peft.log_probs(adapter, teacher) for adapter in (None, "plain", "ina03", "ina01")}
    worst = 0.0
    for request, got in zip(engine["forced"], engine["vllm"]["forced"], strict=True):
        row = references[request["adapter"]][len(request["prompt"]) - 1]
        assert got["tokens"][0] == int(row.argmax()), request["adapter"]
        for token, logprob in got["logprobs"][0].items():
            worst = max(worst, abs(logprob - float(row[int(token)])))
    assert worst <= LOGPROB_TOLERANCE, worst
    assert len(engine["forced"]) == 4 * (len(teacher) - 1)


def test_rho0_is_bit_for_bit_vllm_lora(engine: dict) -> None:
    """InA with ρ = 0 runs vLLM's own LoRA path: the same tokens and log-probs, bit for bit, as the LoRA twin."""
    lora, ina0 = engine["vllm"]["rho0"]
    assert lora["tokens"] == ina0["tokens"]
    assert lora["logprobs"] == ina0["logprobs"]  # floats compared exactly


def test_lora_and_base_rows_beside_ina_are_bit_for_bit(engine: dict) -> None:
    """A LoRA row and a base row batched with an InA row are exactly what they are beside a plain LoRA row."""
    with_ina, with_lora = engine["vllm"]["beside_ina03"], engine["vllm"]["beside_ina0"]
    for row in (0, 2):
        assert with_ina[row] == with_lora[row]
    assert with_ina[1]["tokens"] != with_lora[1]["tokens"]  # the middle rows did differ
    peft, prompts = engine["peft"], engine["prompts"]
    assert with_ina[0]["tokens"] == peft.greedy("plain", prompts[0], STEPS)
    assert with_ina[1]["tokens"] == peft.greedy("ina03", prompts[1], STEPS)
    assert with_ina[2]["tokens"] == peft.greedy(None, prompts[2], STEPS)


def test_base_rows_beside_full_slots_equal_peft_base(engine: dict) -> None:
    """With every slot holding an adapter, a base row's log-probs are PEFT's base within 1e-4 (vLLM 0.32's
    CPU kernels give base rows the last slot's adapter; the plugin keeps them at the base)."""
    peft, prompts = engine["peft"], engine["prompts"]
    for batch in ("beside_ina03", "beside_ina0"):
        for row, adapter in ((0, "plain"), (2, None)):
            got = engine["vllm"][batch][row]
            ids = prompts[row]
            reference = peft.log_probs(adapter, ids + got["tokens"][:-1])
            for step, top in enumerate(got["logprobs"]):
                expected = reference[len(ids) - 1 + step]
                worst = max(abs(lp - float(expected[int(token)])) for token, lp in top.items())
                assert worst <= LOGPROB_TOLERANCE, (batch, adapter, step, worst)


def test_bad_config_refused_in_one_line_engine_keeps_serving(engine: dict) -> None:
    """An InA folder with inhibition 1.5 is refused before the engine (offline API); the engine still serves."""
    error = engine["vllm"]["bad"]["error"]
    assert error is not None and "`inhibition` must be a number in [0, 1); got 1.5" in error, error
    assert "\n" not in error
    after = engine["vllm"]["after_bad"][0]
    assert after["tokens"] == engine["peft"].greedy("ina03", engine["prompts"][0], STEPS)


def test_logprobs_are_finite(engine: dict) -> None:
    for got in engine["vllm"]["mixed"]:
        assert all(math.isfinite(lp) for step in got["logprobs"] for lp in step.values())


def test_export_in_vllm_agrees_with_ina_as_its_report_promises(engine: dict) -> None:
    """``ina export lora``'s folder, plain LoRA in vLLM (no plugin needed): on the report's own held-out
    positions, vLLM's top-1 agrees with PEFT's InA as often as export_report.json says (one position of
    slack, for a near tie that vLLM's and PEFT's arithmetic break differently)."""
    peft, heldout = engine["peft"], engine["heldout"]
    reference = [peft.log_probs("inaexp", ids).argmax(-1).tolist() for ids in heldout]  # InA, in PEFT
    exported = [peft.log_probs("export", ids).argmax(-1).tolist() for ids in heldout]  # the export, in PEFT
    got = iter(engine["vllm"]["export"])
    agree = same_as_peft_export = n = 0
    for ids, ina_top, export_top in zip(heldout, reference, exported, strict=True):
        for k in range(len(ids)):
            token = next(got)["tokens"][0]
            agree += token == ina_top[k]
            same_as_peft_export += token == export_top[k]
            n += 1
    promised = engine["export_report"]["next_token"]["all"]
    assert n == promised["tokens"]
    measured = {"tokens": n, "vllm_top1_agreement": agree / n, "promised": promised["ina_vs_export"]["top1_agreement"],
                "vllm_vs_peft_export": same_as_peft_export / n}  # fmt: skip
    (engine["root"] / "export_check.json").write_text(json.dumps(measured))
    assert abs(agree / n - measured["promised"]) <= 1 / n, measured
    assert same_as_peft_export >= n - 1, measured
