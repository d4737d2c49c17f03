"""The viz commands' outputs: compute (`ina.foundation.attention`, inhibition.py, curves.py), draw (draw.py,
`ina.foundation.charts`), and write PNG, JSON, HTML and Markdown files into one folder, each atomically."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ina.foundation.errors import UsageError
from ina.foundation.files import write_json, write_text
from ina.viz import draw

ATTENTION_FILES = ("attention.json", "attention-grid.png", "attention-moved.png", "attention.html")
INHIBITION_FILES = ("inhibition.json", "inhibition.md", "inhibition.png", "inhibition-tokens.png")
CURVES_FILES = ("curves.json", "curves.png")


def attention_moved(base: dict, adapted: dict, labels: Sequence[str]) -> list[dict]:
    """Per layer, how the adapter moved attention: mean |Δ| over attended entries, and the tokens whose
    received attention (mean over the rows of their column) fell or rose most."""
    moved = []
    for row, layer in enumerate(base["layers"]):
        before, after = np.asarray(base["attention"][row]), np.asarray(adapted["attention"][row])
        difference = after - before  # (T, T)
        valid = (
            np.tril(np.ones_like(difference, dtype=bool))
            if base["causal"]
            else np.ones_like(difference, bool)
        )
        received = difference.mean(axis=0)  # (T,) change in attention each token receives
        order = np.argsort(received)
        moved.append(
            {
                "layer": layer,
                "mean_abs_change": float(np.abs(difference[valid]).mean()),
                "max_abs_change": float(np.abs(difference[valid]).max()),
                "received_change": received.tolist(),
                "most_lost": [
                    {"position": int(i), "token": labels[i], "change": float(received[i])} for i in order[:3]
                ],
                "most_gained": [
                    {"position": int(i), "token": labels[i], "change": float(received[i])}
                    for i in order[::-1][:3]
                ],
            }
        )
    return moved


def attention_report(
    model: nn.Module,
    tokenizer: Any,
    adapters: Sequence[tuple[str, str]],
    text: str,
    text_pair: str | None,
    layers: list[int] | None,
    out_dir: Path,
    base_model: str = "",
) -> dict:
    """Compute base and adapter attention and write ``attention.json``, ``attention-grid.png``, ``attention.html``
    and, with adapters, ``attention-moved.png`` (each adapter minus the base).

    ``adapters`` are (name, path) pairs already loaded into ``model`` under those names.
    """
    from ina.foundation.attention import compute_attention
    from ina.viz.models import adapter_settings

    names = ["base"] + [name for name, _ in adapters]
    columns = [compute_attention(model, tokenizer, text, text_pair, layers, adapter_name=None)]
    for name, _ in adapters:
        columns.append(compute_attention(model, tokenizer, text, text_pair, layers, adapter_name=name))
    first = columns[0]
    labels = draw.token_labels(first["tokens"], first["token_texts"])
    moved = {
        name: attention_moved(first, column, labels)
        for name, column in zip(names[1:], columns[1:], strict=True)
    }
    data = {
        "base_model": base_model,
        "text": text,
        "text_pair": text_pair,
        **{
            k: first[k]
            for k in ("tokens", "token_texts", "layers", "causal", "truncated", "num_layers", "num_heads")
        },
        "context_length": first["context_length"],
        "columns": [
            {
                "name": "base",
                "adapter_path": None,
                "settings": None,
                "attention": first["attention"],
            }
        ]
        + [
            {
                "name": name,
                "adapter_path": str(path),
                "settings": adapter_settings(model, name),
                "attention": column["attention"],
            }
            for (name, path), column in zip(adapters, columns[1:], strict=True)
        ],
        "moved": moved,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"{base_model}: attention averaged over heads" + (
        " (text truncated)" if first["truncated"] else ""
    )
    column_names = [
        name if name == "base" else f"{name} (ρ={adapter_settings(model, name)['inhibition']:g})"
        for name in names
    ]
    scale = draw.attention_grid(columns, column_names, out_dir / "attention-grid.png", title=title)
    data["colour_scale"] = scale
    if len(columns) > 1:
        data["moved_scale"] = draw.moved_grid(
            columns,
            column_names,
            out_dir / "attention-moved.png",
            title=f"{base_model}: attention moved by each adapter",
        )
    write_json(out_dir / "attention.json", data, indent=1)
    write_text(out_dir / "attention.html", _attention_html(data, columns, column_names, scale))
    return data


def _attention_html(data: dict, columns: list[dict], names: list[str], scale: dict) -> str:
    moved_max = max(
        (layer["max_abs_change"] for per_layer in data["moved"].values() for layer in per_layer), default=0.0
    )
    escape = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>ina viz attention</title>",
        "<style>body{font-family:sans-serif;max-width:1400px;margin:1em auto;padding:0 1em}"
        "table{border-collapse:collapse;font-size:90%}td,th{border:1px solid #ccc;padding:2px 6px}"
        "img{max-width:100%}code{background:#f4f4f4}</style></head><body>",
        f"<h1>Attention of {escape(data['base_model'])}, averaged over {data['num_heads']} heads</h1>",
        f"<p>Text: <code>{escape(data['text'])}</code>"
        + (f" &nbsp; pair: <code>{escape(data['text_pair'])}</code>" if data["text_pair"] else "")
        + f"</p><p>{len(data['tokens'])} tokens; {'causal (future positions blank)' if data['causal'] else 'bidirectional'}"
        + ("; <b>the text was truncated to the model's context</b>" if data["truncated"] else "")
        + f". Adapters run unmerged with eager attention. Colour scale shared by all maps: 0 to {scale['vmax']:.3f}"
        f" (power γ={scale['gamma']}); the “attention moved” maps (adapter − base) share ±{moved_max:.3f}.</p>",
        "<p>Row <i>i</i> of each map is how token <i>i</i> attends to every token (rows sum to 1).</p>",
    ]
    for row, layer in enumerate(data["layers"]):
        png = draw.layer_figure_png(columns, names, row, scale["vmax"], moved_max, scale["gamma"])
        parts.append(f"<h2>Layer {layer} of {data['num_layers']}</h2>")
        parts.append(
            f"<img alt='layer {layer}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
        )
        if data["moved"]:
            parts.append(
                "<table><tr><th>adapter</th><th>mean |Δ|</th><th>lost most attention</th><th>gained most</th></tr>"
            )
            for name, per_layer in data["moved"].items():
                entry = per_layer[row]

                def tokens(items: list[dict]) -> str:
                    return ", ".join(f"{escape(i['token'])} ({i['change']:+.4f})" for i in items)

                parts.append(
                    f"<tr><td>{escape(name)}</td><td>{entry['mean_abs_change']:.4f}</td>"
                    f"<td>{tokens(entry['most_lost'])}</td><td>{tokens(entry['most_gained'])}</td></tr>"
                )
            parts.append("</table>")
    parts.append("<p>The numbers behind every map are in <code>attention.json</code>.</p></body></html>")
    return "\n".join(parts)


def inhibition_report(
    model: nn.Module,
    tokenizer: Any,
    adapters: Sequence[tuple[str, str]],
    texts: Sequence[str | tuple[str, str]],
    out_dir: Path,
    base_model: str = "",
) -> dict:
    """Gate statistics of each adapter over ``texts``: ``inhibition.json``, ``inhibition.md`` (tables),
    ``inhibition.png`` (per-layer distributions) and ``inhibition-tokens.png`` (first text, per token)."""
    from ina.viz.inhibition import compute_inhibition, summarize, token_texts

    if not texts:
        raise UsageError("no text to run: give --text or a --data file with at least one text")
    result = {
        "base_model": base_model,
        "texts": token_texts(tokenizer, model, texts),
        "adapters": [],
    }
    for name, path in adapters:
        adapter = compute_inhibition(model, tokenizer, texts, name)
        adapter["adapter_path"] = str(path)
        result["adapters"].append(adapter)
    result["num_tokens"] = sum(len(t["tokens"]) for t in result["texts"])
    summarize(result)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "inhibition.json", result, indent=1)
    write_text(out_dir / "inhibition.md", markdown_tables(result))
    draw.inhibition_plots(result, out_dir / "inhibition.png")
    draw.token_inhibition_heatmap(result, out_dir / "inhibition-tokens.png")
    return result


def markdown_tables(result: dict) -> str:
    """The summary table (one row per adapter), the per-layer table and the most-inhibited tokens, in Markdown."""
    lines = [
        f"# What the inhibition gate does: {result['base_model']}",
        "",
        f"{len(result['texts'])} text(s), {result['num_tokens']} tokens. *below threshold*: share of the r rank "
        "units of a token with h < ρ·max_r(h) (squashed by f); *max_r(h)*: the per-token maximum; "
        "*‖Δ‖/‖W0x‖*: adapter output norm relative to the base layer output norm. Mean (median) over tokens "
        "and adapted layers.",
        "",
        "| adapter | ρ | f | r | below threshold | max_r(h) | ‖Δ‖/‖W0x‖ |",
        "|---|---|---|---|---|---|---|",
    ]
    for adapter in result["adapters"]:
        s, settings = adapter["summary"], adapter["settings"]
        lines.append(
            f"| {adapter['name']} | {settings['inhibition']:g} | {settings['activation']} | {settings['r']} | "
            f"{s['below_threshold']['mean']:.3f} ({s['below_threshold']['median']:.3f}) | "
            f"{s['token_max']['mean']:.3f} ({s['token_max']['median']:.3f}) | "
            f"{s['relative_norm']['mean']:.4f} ({s['relative_norm']['median']:.4f}) |"
        )
    lines += [
        "",
        "## Per adapted layer",
        "",
        "| layer | " + " | ".join(f"{a['name']} below / max / ‖Δ‖/‖W0x‖" for a in result["adapters"]) + " |",
        "|---|" + "---|" * len(result["adapters"]),
    ]
    for i, module in enumerate(result["adapters"][0]["modules"]):
        cells = []
        for adapter in result["adapters"]:
            s = adapter["modules"][i]["summary"]
            cells.append(
                f"{s['below_threshold']['mean']:.3f} / {s['token_max']['mean']:.2f} / {s['relative_norm']['mean']:.4f}"
            )
        lines.append(f"| {module['name']} | " + " | ".join(cells) + " |")
    for adapter in result["adapters"]:
        lines += [
            "",
            f"## Most inhibited tokens: {adapter['name']} (ρ={adapter['settings']['inhibition']:g})",
            "",
            "| token | below threshold (mean over layers) | text | in context |",
            "|---|---|---|---|",
        ]
        if not adapter["most_inhibited"]:
            lines.append("| (ρ = 0: the gate is off, the adapter is LoRA) | | | |")
        for item in adapter["most_inhibited"][:10]:
            token = item["token"].strip().replace("|", "\\|") or repr(item["token"])
            context = item["context"].replace("|", "\\|")
            lines.append(f"| `{token}` | {item['below_threshold']:.3f} | {item['text_index']} | {context} |")
    return "\n".join(lines) + "\n"


def curves_report(run_dirs: list[str], out_dir: Path) -> list[dict]:
    """Read every run's losses and write ``curves.json`` and ``curves.png``."""
    from ina.foundation.charts import loss_curves
    from ina.viz.curves import read_runs

    runs = read_runs(run_dirs)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "curves.json", runs, indent=1)
    loss_curves(runs, out_dir / "curves.png")
    return runs
