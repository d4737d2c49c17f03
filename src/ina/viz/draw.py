"""Drawing the numbers that attention.py and inhibition.py compute, on `ina.foundation.charts`.

Every function takes plain data (lists, dicts) and writes a PNG atomically; none runs a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ina.foundation.charts import png_bytes, pyplot, save_figure

MASKED_COLOUR = "#f2f2f2"  # future positions of causal models: not attended, drawn blank


def token_labels(tokens: Sequence[str], token_texts: Sequence[str] | None = None) -> list[str]:
    """Readable axis labels: the decoded token, with leading/trailing spaces dropped and blanks made visible."""
    labels = []
    for i, token in enumerate(tokens):
        text = token_texts[i] if token_texts is not None else token
        text = text.replace("\n", "\\n").strip()
        labels.append(text if text else repr(token)[1:-1] or "␣")
    return labels


def _masked(matrix: np.ndarray, causal: bool) -> np.ma.MaskedArray:
    mask = np.triu(np.ones_like(matrix, dtype=bool), k=1) if causal else np.zeros_like(matrix, dtype=bool)
    return np.ma.masked_array(matrix, mask=mask)


def _panel(
    axis: Any, matrix: np.ndarray, labels: list[str], x_labels: bool, y_labels: bool, **imshow: Any
) -> Any:
    image = axis.imshow(matrix, interpolation="nearest", aspect="equal", **imshow)
    size = max(4.0, min(9.0, 180.0 / max(len(labels), 1)))
    axis.set_xticks(range(len(labels)))
    axis.set_yticks(range(len(labels)))
    axis.set_xticklabels(labels if x_labels else [], rotation=90, fontsize=size)
    axis.set_yticklabels(labels if y_labels else [], fontsize=size)
    axis.tick_params(length=0)
    return image


def _frame(figure: Any, image: Any, label: str, title: str | None) -> None:
    """Room for the title on top and one colour bar on the right, in inches so that any grid size looks alike."""
    width, height = figure.get_figwidth(), figure.get_figheight()
    right = 1 - 1.3 / width
    figure.subplots_adjust(
        left=0.6 / width, right=right, top=1 - (0.55 if title else 0.2) / height, bottom=0.9 / height
    )
    bar_height = min(4.5, 0.6 * height) / height
    colour_bar = figure.add_axes((right + 0.25 / width, 0.5 - bar_height / 2, 0.18 / width, bar_height))
    figure.colorbar(image, cax=colour_bar).set_label(label)
    if title:
        figure.suptitle(title, fontsize=12, y=1 - 0.1 / height)


def _layer_grid(
    matrices: Sequence[Sequence[np.ndarray]],
    titles: Sequence[str],
    layers: Sequence[int],
    labels: list[str],
    causal: bool,
    path: Path,
    bar_label: str,
    title: str | None,
    **imshow: Any,
) -> None:
    """One PNG: rows = layers, a column per entry of ``matrices`` (each a (T, T) map per layer), one scale."""
    panel = max(2.4, 0.16 * len(labels) + 0.9)
    figure, axes = pyplot().subplots(
        len(layers),
        len(matrices),
        figsize=(panel * len(matrices) + 1.2, panel * len(layers) + 0.6),
        gridspec_kw={"wspace": 0.06, "hspace": 0.1},
        squeeze=False,
    )
    image = None
    for row, layer in enumerate(layers):
        for col, per_layer in enumerate(matrices):
            axis = axes[row][col]
            image = _panel(
                axis,
                _masked(per_layer[row], causal),
                labels,
                x_labels=row == len(layers) - 1,
                y_labels=col == 0,
                **imshow,
            )
            if row == 0:
                axis.set_title(titles[col], fontsize=11, fontweight="bold")
            if col == 0:
                axis.set_ylabel(f"layer {layer}", fontsize=10, fontweight="bold")
    _frame(figure, image, bar_label, title)
    save_figure(figure, path)


def attention_grid(
    columns: Sequence[dict], names: Sequence[str], path: Path, title: str | None = None, gamma: float = 0.5
) -> dict[str, float]:
    """One PNG: rows = layers, columns = the models (base, then each adapter), one shared colour scale.

    ``columns`` are :func:`ina.foundation.attention.compute_attention` results on the same text and layers.
    The scale is a power norm (``gamma``) from 0 to the largest weight of the whole grid, so that the
    weak weights stay visible next to the [CLS]/[SEP] sinks; causal models' future positions are blank.
    Returns the scale used.
    """
    from matplotlib import colors

    first = columns[0]
    vmax = max(float(np.max(m)) for column in columns for m in column["attention"])
    _layer_grid(
        [[np.asarray(m) for m in column["attention"]] for column in columns],
        names,
        first["layers"],
        token_labels(first["tokens"], first.get("token_texts")),
        first["causal"],
        path,
        f"attention weight (mean over heads; power scale γ={gamma})",
        title,
        cmap=pyplot().get_cmap("viridis").with_extremes(bad=MASKED_COLOUR),
        norm=colors.PowerNorm(gamma=gamma, vmin=0.0, vmax=vmax),
    )
    return {"vmin": 0.0, "vmax": vmax, "gamma": gamma}


def moved_grid(columns: Sequence[dict], names: Sequence[str], path: Path, title: str | None = None) -> float:
    """One PNG: rows = layers, columns = each adapter minus the base (``columns[0]``), one symmetric scale.

    Red: the adapter attends more than the base; blue: less. Returns the largest |difference| (the scale).
    """
    base = columns[0]
    differences = [
        [
            np.asarray(c["attention"][row]) - np.asarray(base["attention"][row])
            for row in range(len(base["layers"]))
        ]
        for c in columns[1:]
    ]
    limit = max((float(np.abs(d).max()) for per in differences for d in per), default=0.0) or 1e-6
    _layer_grid(
        differences,
        [f"{name} − {names[0]}" for name in names[1:]],
        base["layers"],
        token_labels(base["tokens"], base.get("token_texts")),
        base["causal"],
        path,
        "attention moved: adapter − base (red: more, blue: less)",
        title,
        cmap=pyplot().get_cmap("RdBu_r").with_extremes(bad=MASKED_COLOUR),
        vmin=-limit,
        vmax=limit,
    )
    return limit


def layer_figure_png(
    columns: Sequence[dict], names: Sequence[str], row: int, vmax: float, moved_max: float, gamma: float = 0.5
) -> bytes:
    """PNG bytes for one layer: top row every model, bottom row each adapter minus the base ("attention moved")."""
    from matplotlib import colors

    plt = pyplot()
    labels = token_labels(columns[0]["tokens"], columns[0].get("token_texts"))
    causal = columns[0]["causal"]
    cmap = plt.get_cmap("viridis").with_extremes(bad=MASKED_COLOUR)
    diverging = plt.get_cmap("RdBu_r").with_extremes(bad=MASKED_COLOUR)
    panel = max(2.4, 0.16 * len(labels) + 0.9)
    rows = 2 if len(columns) > 1 else 1
    figure, axes = plt.subplots(
        rows,
        len(columns),
        figsize=(panel * len(columns) + 1.5, panel * rows),
        squeeze=False,
        gridspec_kw={"wspace": 0.12, "hspace": 0.25},
    )
    base = np.asarray(columns[0]["attention"][row])
    norm = colors.PowerNorm(gamma=gamma, vmin=0.0, vmax=vmax)
    image = moved = None
    for col, column in enumerate(columns):
        image = _panel(
            axes[0][col],
            _masked(np.asarray(column["attention"][row]), causal),
            labels,
            x_labels=rows == 1,
            y_labels=col == 0,
            cmap=cmap,
            norm=norm,
        )
        axes[0][col].set_title(names[col], fontsize=10, fontweight="bold")
    if rows == 2:
        axes[1][0].axis("off")
        axes[1][0].text(
            0.5,
            0.5,
            "attention moved\n(adapter − base)\nred: more, blue: less",
            ha="center",
            va="center",
            fontsize=10,
        )
        limit = moved_max if moved_max > 0 else 1e-6
        for col in range(1, len(columns)):
            difference = np.asarray(columns[col]["attention"][row]) - base
            moved = _panel(
                axes[1][col],
                _masked(difference, causal),
                labels,
                x_labels=True,
                y_labels=col == 1,
                cmap=diverging,
                vmin=-limit,
                vmax=limit,
            )
            axes[1][col].set_title(f"{names[col]} − {names[0]}", fontsize=9)
        figure.colorbar(moved, ax=list(axes[1]), shrink=0.8, pad=0.02, label="change in weight")
    figure.colorbar(image, ax=list(axes[0]), shrink=0.8, pad=0.02, label="weight")
    return png_bytes(figure)


def inhibition_plots(result: dict, path: Path) -> None:
    """Three panels per adapted layer, one colour per adapter: share of rank units below the threshold,
    the per-token maximum ``max_r(h)``, and ``‖adapter output‖ / ‖base output‖`` (box plots over tokens)."""
    plt = pyplot()
    adapters = result["adapters"]
    modules = adapters[0]["modules"]
    names = [m["name"] for m in modules]
    figure, axes = plt.subplots(
        3,
        1,
        figsize=(max(8.0, 0.45 * len(names) * max(1, len(adapters)) ** 0.5 + 3), 11),
        layout="constrained",
    )
    panels = [
        ("below_threshold", "share of rank units below ρ·max_r(h)\n(per token)"),
        ("token_max", "per-token max_r(h)"),
        ("relative_norm", "‖adapter output‖ / ‖base output‖\n(per token)"),
    ]
    width = 0.8 / len(adapters)
    colours = plt.get_cmap("tab10").colors
    for axis, (key, ylabel) in zip(axes, panels, strict=True):
        handles = []
        for a, adapter in enumerate(adapters):
            positions = [i - 0.4 + width * (a + 0.5) for i in range(len(names))]
            data = [module[key] for module in adapter["modules"]]
            boxes = axis.boxplot(
                data,
                positions=positions,
                widths=width * 0.85,
                patch_artist=True,
                showfliers=False,
                medianprops={"color": "black", "linewidth": 1},
            )
            for box in boxes["boxes"]:
                box.set_facecolor(colours[a % len(colours)])
                box.set_alpha(0.75)
            handles.append(boxes["boxes"][0])
        axis.set_ylabel(ylabel, fontsize=9)
        axis.set_xticks(range(len(names)))
        axis.set_xticklabels(names if axis is axes[-1] else [], rotation=90, fontsize=7)
        axis.set_xlim(-0.6, len(names) - 0.4)
        axis.grid(axis="y", alpha=0.3)
        if axis is axes[0]:
            axis.legend(
                handles,
                [f"{a['name']} (ρ={a['settings']['inhibition']:g})" for a in adapters],
                fontsize=8,
                loc="upper left",
                bbox_to_anchor=(1.0, 1.0),
            )
    figure.suptitle(f"what the gate does: {result['base_model']}, {result['num_tokens']} tokens", fontsize=11)
    save_figure(figure, path)


def token_inhibition_heatmap(result: dict, path: Path, text_index: int = 0) -> None:
    """For one text: share of rank units below the threshold, tokens × adapted layers, one panel per adapter."""
    from matplotlib import colors

    plt = pyplot()
    adapters = result["adapters"]
    text = result["texts"][text_index]
    labels = token_labels(text["tokens"], text["token_texts"])
    names = [m["name"] for m in adapters[0]["modules"]]
    figure, axes = plt.subplots(
        len(adapters),
        1,
        figsize=(max(6.0, 0.18 * len(labels) + 2.5), (0.14 * len(names) + 1.2) * len(adapters)),
        layout="constrained",
        squeeze=False,
    )
    image = None
    for a, adapter in enumerate(adapters):
        matrix = np.asarray([m["per_text"][text_index]["below_threshold"] for m in adapter["modules"]])
        axis = axes[a][0]
        image = axis.imshow(
            matrix, aspect="auto", cmap="magma", norm=colors.Normalize(0, 1), interpolation="nearest"
        )
        axis.set_yticks(range(len(names)))
        axis.set_yticklabels(names, fontsize=6)
        axis.set_xticks(range(len(labels)))
        axis.set_xticklabels(labels if a == len(adapters) - 1 else [], rotation=90, fontsize=7)
        gate_off = ": the gate is off (LoRA)" if adapter["settings"]["inhibition"] == 0 else ""
        axis.set_title(f"{adapter['name']} (ρ={adapter['settings']['inhibition']:g}){gate_off}", fontsize=9)
    figure.colorbar(
        image, ax=[row[0] for row in axes], shrink=0.6, label="share of rank units below threshold"
    )
    save_figure(figure, path)
