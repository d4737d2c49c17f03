"""The printed fidelity report of an export (the same numbers as ``export_report.json``)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _kl(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _short(text: str | None, width: int = 60) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def build_report(
    options: Any,
    source: Any,
    fit: dict[str, Any],
    calibration: dict[str, Any],
    errors: list[Any],
    next_token: dict[str, Any],
    rows: list[dict[str, Any]],
    llama_cpp: dict[str, Any] | None,
    dst: Path,
    model: Any,
    times: dict[str, float],
) -> dict[str, Any]:
    """Everything ``export_report.json`` holds: source, export, calibration, per-layer and end-to-end fidelity."""
    import torch

    from ina.export.fidelity import summarize_answers

    layers = [
        {**row, "heldout_relative_error": e.relative} for row, e in zip(fit["rows"], errors, strict=True)
    ]
    worst = max(layers, key=lambda row: row["heldout_relative_error"])
    if options.rank:
        rule = f"--rank {options.rank}"
    else:
        rule = (
            "SRC's rank (exact copy)"
            if fit["exact"]
            else f"--explained_variance {options.explained_variance}"
        )
    return {
        "source": {
            "path": str(Path(options.src).resolve()),
            "inhibition": source.inhibition,
            "activation": source.activation,
            "r": source.r,
            "lora_alpha": source.lora_alpha,
            "base_model": source.base_model_name_or_path,
        },
        "export": {
            "path": str(dst.resolve()),
            "format": options.format,
            "exact": fit["exact"],
            "r": fit["rank"],
            "lora_alpha": fit["alpha"],
            "rank_rule": rule,
        },
        "calibration": calibration,
        "layers_summary": {
            "layers": len(layers),
            "heldout_relative_error_median": statistics.median(r["heldout_relative_error"] for r in layers),
            "heldout_relative_error_max": worst["heldout_relative_error"],
            "worst_layer": worst["name"],
        },
        "next_token": next_token,
        "answers": summarize_answers(rows, options.max_new_tokens),
        "llama_cpp": llama_cpp,
        "prompts": rows,
        "layers": layers,
        "timing_s": {key: round(value, 1) for key, value in times.items()},
        "torch_threads": torch.get_num_threads(),
        "device": str(next(model.parameters()).device),
    }


def format_report(report: dict[str, Any]) -> str:
    """Per-layer errors, next-token agreement and the answers side by side, as text."""
    source, export, cal = report["source"], report["export"], report["calibration"]
    how = (
        "copied exactly (ρ = 0 is LoRA)"
        if export["exact"]
        else f"fitted, rank {export['r']} ({export['rank_rule']})"
    )
    lines = [
        f"InA adapter {source['path']} (ρ = {source['inhibition']}, {source['activation']}, r = {source['r']}) "
        f"→ LoRA {export['path']}: {how}, lora_alpha {export['lora_alpha']:g}",
        f"calibration: {cal['fit_tokens']} tokens ({cal['fit_samples']} samples) from {cal['chosen_by']}; "
        f"held out: {cal['heldout_tokens']} tokens ({cal['heldout_samples']} samples)",
    ]
    layers = report["layers_summary"]
    lines.append(
        f"per layer, held-out relative error ‖Δ − Δ̂‖²/‖Δ‖² over {layers['layers']} layers: median "
        f"{layers['heldout_relative_error_median']:.4f}, max {layers['heldout_relative_error_max']:.4f} "
        f"({layers['worst_layer']})"
    )
    lines.append("next-token distributions on held-out text   mean KL   top-1 agreement   tokens")
    for scope, label in (("all", "all tokens"), ("answer", "answer tokens")):
        block = report["next_token"].get(scope)
        if not block or not block["tokens"]:
            continue
        for other in ("export", "base"):
            pair = block[f"ina_vs_{other}"]
            lines.append(
                f"  {label + ', InA vs ' + other:<42}{_kl(pair['mean_kl']):>8}   {_pct(pair['top1_agreement']):>15}   "
                f"{block['tokens']:>6}"
            )
    answers = report.get("answers") or {}
    if answers:
        same, labels = answers["same_as_ina"], answers["label_accuracy"]
        lines.append(
            f"held-out prompts ({answers['prompts']}, greedy, {answers['max_new_tokens']} new tokens), answer identical "
            "to InA's: " + ", ".join(f"{name} {_pct(value)}" for name, value in same.items())
        )
        if labels:
            lines.append(
                f"label accuracy on the {answers['label_prompts']} prompts with a one-to-three-word reference: "
                + ", ".join(f"{name} {_pct(value)}" for name, value in labels.items())
            )
        names = [c for c in report["prompts"][0] if c not in ("instruction", "input")]
        for row in report["prompts"]:
            lines.append(
                f"  - {_short(row['instruction'])}"
                + (f" | {_short(row['input'], 50)}" if row["input"] else "")
            )
            lines += [f"      {name + ':':<16}{_short(row[name])}" for name in names]
    return "\n".join(lines)
