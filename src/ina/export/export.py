"""`ina export lora`: the LoRA that best reproduces an InA adapter on real activations, and how close it is.

    report = export_lora(ExportOptions(src="outputs/ina-finetune-smollm2", dst="outputs/ina-lora"))

1. load the base with the InA adapter; read calibration text formatted with the adapter's prompt template;
2. stream each adapted layer's ``XᵀX`` and ``XᵀΔ`` over the fitting text (`capture`), fit the rank-k map
   in closed form (`fit`); ρ = 0 adapters are LoRA already and are copied unchanged;
3. write the LoRA (and ``adapter.gguf``) into a staging folder, load it next to InA, and measure on
   held-out text: each layer's relative error, next-token KL and top-1 agreement (InA vs export, InA vs
   base), held-out answers side by side (and llama.cpp's, when llama-cpp-python is installed);
4. refuse (``--min_agreement``) or publish: ``DST`` appears complete, with ``export_report.json``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ina.export import calibration as calib
from ina.export.options import ExportOptions
from ina.export.report import build_report, format_report
from ina.foundation.errors import UsageError

REPORT_FILE = "export_report.json"
INA, EXPORT = "ina", "export"


def _source_config(src: str) -> Any:
    from ina.core.loading import read_adapter_config

    try:
        return read_adapter_config(src)
    except (FileNotFoundError, NotADirectoryError, ValueError) as error:
        raise UsageError(f"SRC {src!r}: not an adapter folder ({str(error).splitlines()[0]})") from None


def _base_name(options: ExportOptions, source: Any) -> str:
    from ina.foundation.models import resolve_base_model

    name = options.base_model or source.base_model_name_or_path or ""
    if not options.base_model and Path(name).is_absolute() and not Path(name).exists():
        raise UsageError(
            f"--base_model: SRC records its base as {name!r}, which is not on this machine; pass --base_model PATH"
        )
    return resolve_base_model(name)


def _prompt_settings(src: str, tokenizer: Any) -> tuple[Any, bool, int | None]:
    from ina.foundation.prompts import PROMPT_FILE, PromptTemplate

    file = Path(src) / PROMPT_FILE
    data = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}
    template = PromptTemplate.from_adapter(src)
    if template is None:
        template = PromptTemplate.load("chat" if getattr(tokenizer, "chat_template", None) else "alpaca")
    return template, bool(data.get("add_eos_token", True)), data.get("cutoff_len")


def _fit(
    model: Any, layers: list[Any], batches: list[dict[str, Any]], options: ExportOptions, source: Any
) -> dict:
    """The export's factors per layer, its rank and alpha, and per-layer fit numbers (nothing fitted for ρ = 0)."""
    import torch

    from ina.export.capture import MomentCapture
    from ina.export.fidelity import variant
    from ina.export.fit import fit_low_rank, rank_for, whitening

    if source.inhibition == 0:
        return {
            "exact": True,
            "rank": int(source.r),
            "alpha": float(source.lora_alpha),
            "factors": {layer.name: (layer.A, layer.B) for layer in layers},
            "maps": [(layer.A, layer.B * layer.scaling) for layer in layers],
            "rows": [{"name": layer.name, "in": layer.shape[0], "out": layer.shape[1]} for layer in layers],
        }
    from ina.foundation.progress import progress

    capture = MomentCapture(layers)
    device = next(model.parameters()).device
    with torch.no_grad(), variant(model, INA), capture.attached():
        for batch in progress(batches, desc="fitting (reading the adapted layers)", unit="batch"):
            capture.rows = batch["attention_mask"].reshape(-1).bool()
            inputs = {
                "input_ids": batch["input_ids"].to(device),
                "attention_mask": batch["attention_mask"].to(device),
            }
            try:
                model(**inputs, logits_to_keep=1)  # the hooks need no logits: skip the vocabulary projection
            except TypeError:  # a model without that argument
                model(**inputs)
            capture.end_batch()
    max_rank = max(int(layer.A.shape[0]) for layer in layers)
    fits, white = [], {}
    for layer, moments in zip(layers, capture.moments, strict=True):
        if id(moments.gram) not in white:  # one eigendecomposition per shared XᵀX
            white[id(moments.gram)] = whitening(moments.gram)
        basis = torch.linalg.qr(layer.B.to(torch.float64).cpu())[0]  # Δ lies in the span of B's columns
        fits.append(fit_low_rank(moments, max_rank, white[id(moments.gram)], basis))
    needed = [rank_for(f.singular_values, options.explained_variance) for f in fits]
    rank = options.rank or min(max_rank, max(needed))
    factors = {layer.name: (f.A[:rank], f.B[:, :rank]) for layer, f in zip(layers, fits, strict=True)}
    rows = [
        {
            "name": layer.name,
            "in": layer.shape[0],
            "out": layer.shape[1],
            "rank_needed": k,
            "explained_variance": f.explained(rank),
            "calibration_relative_error": f.calibration_error(rank),
            "input_rank": f.input_rank,
        }
        for layer, f, k in zip(layers, fits, needed, strict=True)
    ]
    # alpha = r: PEFT's scaling alpha / r is 1, the fitted factors carry the whole map
    return {
        "exact": False,
        "rank": rank,
        "alpha": float(rank),
        "factors": factors,
        "maps": list(factors.values()),
        "rows": rows,
    }


def _max_rank(source: Any) -> int:
    return max([int(source.r), *(int(r) for r in (source.rank_pattern or {}).values())])


def export_lora(options: ExportOptions, log: Callable[[str], Any] = lambda _: None) -> dict[str, Any]:
    """Export ``options.src`` (an InA adapter) as a LoRA in ``options.dst``; returns the fidelity report."""
    from ina.core.loading import load_adapter
    from ina.export import fidelity
    from ina.export.capture import ErrorCapture, adapted_layers
    from ina.export.gguf_check import embedded_gguf, llama_cpp_side_by_side
    from ina.export.gguf_lora import FILE_NAME, check_llama, write_gguf_lora
    from ina.export.lora import (
        check_destination,
        lora_config,
        publish,
        source_extras,
        staging_folder,
        write_lora,
    )
    from ina.foundation.files import write_json
    from ina.foundation.models import load_with_adapters, torch_threads
    from ina.foundation.progress import progress

    options.check()
    started = time.time()
    source = _source_config(options.src)
    dst = check_destination(options.src, options.dst, options.overwrite)
    if options.rank > _max_rank(source):
        raise UsageError(
            f"--rank must be at most SRC's rank r = {_max_rank(source)}: the branch's output lies in the span of "
            f"B's columns, so a higher rank cannot fit better; got {options.rank}"
        )
    with torch_threads(options.torch_threads or None):
        base = _base_name(options, source)
        model, tokenizer = load_with_adapters(
            base, {INA: options.src}, dtype=options.dtype, device=options.device
        )
        if options.format == "gguf":
            check_llama(model.config)
        template, add_eos, cutoff = _prompt_settings(options.src, tokenizer)
        summary = calib.training_summary(options.src)
        known = [
            (e.get("instruction", ""), e.get("input", "")) for e in (summary or {}).get("examples") or []
        ]
        data = calib.load_calibration(
            options.src,
            options.calibration or None,
            template,
            tokenizer,
            options.calibration_tokens,
            options.heldout_tokens,
            options.max_length or int(cutoff or 256),
            add_eos,
            options.seed,
            known,
        )
        layers = adapted_layers(model, INA)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        times = {"load": time.time() - started}
        log(
            f"{len(layers)} adapted layers (ρ = {source.inhibition}); fitting on {data.source['fit_tokens']} tokens, "
            f"measuring on {data.source['heldout_tokens']}"
        )
        fit = _fit(model, layers, calib.batches(data.fit, options.batch_size, pad), options, source)
        times["fit"] = time.time() - started - times["load"]
        staging = staging_folder(dst)
        try:
            config = lora_config(source, fit["rank"], fit["alpha"], fit["exact"])
            tensors = {}
            for name, (A, B) in fit["factors"].items():
                tensors[f"{name}.lora_A.weight"], tensors[f"{name}.lora_B.weight"] = A, B
            write_lora(staging, config, tensors, options.src, source_extras(options.src))
            if options.format == "gguf":
                # llama.cpp scales each layer by alpha / its r; a copied (ρ = 0) source may scale layers
                # otherwise (rsLoRA, rank or alpha patterns): fold its own scaling into B
                gguf_factors = {
                    layer.name: (A, B * (layer.scaling * A.shape[0] / fit["alpha"]) if fit["exact"] else B)
                    for layer, (A, B) in zip(layers, fit["factors"].values(), strict=True)
                }
                write_gguf_lora(staging / FILE_NAME, gguf_factors, fit["alpha"], model.config)
            model = load_adapter(model, staging, adapter_name=EXPORT)
            errors = ErrorCapture(layers, fit["maps"])
            heldout = calib.batches(data.heldout, max(1, options.batch_size // 2), pad)
            measuring = progress(heldout, desc="measuring (InA, export, base)", unit="batch")
            next_token = fidelity.compare_next_tokens(model, measuring, errors.attached)
            rows = []
            if options.prompts:
                log(
                    f"answering {min(options.prompts, len(data.heldout))} held-out prompts with InA and the export"
                )
                rows = fidelity.side_by_side(
                    model, tokenizer, template, data.heldout[: options.prompts], options.max_new_tokens
                )
            llama_cpp = None
            gguf_base = options.gguf_base or embedded_gguf(base)
            if options.format == "gguf" and rows and gguf_base:
                llama_cpp = llama_cpp_side_by_side(
                    gguf_base, staging / FILE_NAME, tokenizer, template, rows, options.max_new_tokens
                )
            times["measure"] = time.time() - started - times["load"] - times["fit"]
            report = build_report(
                options,
                source,
                fit,
                data.source,
                errors.errors,
                next_token,
                rows,
                llama_cpp,
                dst,
                model,
                times,
            )
            log(format_report(report))
            agreement = next_token["all"]["ina_vs_export"]["top1_agreement"]
            if options.min_agreement and agreement < options.min_agreement:
                raise UsageError(
                    f"--min_agreement {options.min_agreement}: the export agrees with InA on {agreement:.1%} of "
                    "held-out next tokens, below the threshold; nothing was written. Raise --rank or "
                    "--calibration_tokens, lower the threshold, or serve the InA adapter itself (ina serve)"
                )
            report["timing_s"]["total"] = round(time.time() - started, 1)
            write_json(staging / REPORT_FILE, report)
            publish(staging, dst)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return report
