"""Charts as PNG files (matplotlib, Agg backend): the one place outside `ina.viz` that draws.

Every function takes plain data and writes its PNG atomically; none runs a model. `ina.viz` draws
attention and inhibition pictures on top of `pyplot`, `save_figure` and `png_bytes`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ina.foundation.files import PathLike, write_bytes


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(figure: Any, dpi: int = 100) -> bytes:
    """The PNG of ``figure`` (closed afterwards)."""
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        pyplot().close(figure)
    return buffer.getvalue()


def save_figure(figure: Any, path: PathLike, dpi: int = 110) -> Path:
    """Save ``figure`` as a PNG at ``path`` atomically and close it."""
    return write_bytes(path, png_bytes(figure, dpi))


def loss_curves(
    runs: Sequence[dict[str, Any]],
    path: PathLike,
    title: str = "training and validation loss",
    baseline: float | None = None,
    baseline_label: str = "validation, base model",
) -> Path:
    """Training (solid) and validation (dashed, dots) loss against the step, one colour per run.

    Each run is ``{"name": str, "train": [{"step", "loss"}], "eval": [{"step", "loss"}]}``; ``baseline``
    draws a dotted horizontal line (e.g. the base model's validation loss).
    """
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(8, 5), layout="constrained")
    colours = plt.get_cmap("tab10").colors
    for i, run in enumerate(runs):
        colour = colours[i % len(colours)]
        prefix = f"{run['name']} " if run.get("name") else ""
        if run.get("train"):
            steps, losses = zip(*[(p["step"], p["loss"]) for p in run["train"]], strict=True)
            axis.plot(steps, losses, color=colour, linewidth=1.4, label=f"{prefix}train")
        if run.get("eval"):
            steps, losses = zip(*[(p["step"], p["loss"]) for p in run["eval"]], strict=True)
            axis.plot(
                steps,
                losses,
                color=colour,
                linestyle="--",
                marker="o",
                markersize=3,
                label=f"{prefix}validation",
            )
    if baseline is not None:
        axis.axhline(baseline, linestyle=":", color="gray", label=baseline_label)
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axis.set_title(title)
    return save_figure(figure, path)


def errorbar_chart(
    series: Sequence[dict[str, Any]],
    path: PathLike,
    xlabel: str,
    ylabel: str,
    title: str,
) -> Path:
    """Lines of means with error bars, and optional dots (e.g. one per seed), one colour per series.

    Each series is ``{"label": str, "x": [...], "y": [...], "yerr": [...]?, "points": [(x, y), ...]?}``.
    """
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 4), layout="constrained")
    colours = plt.get_cmap("tab10").colors
    for i, line in enumerate(series):
        colour = colours[i % len(colours)]
        axis.errorbar(
            line["x"],
            line["y"],
            yerr=line.get("yerr"),
            marker="o",
            capsize=4,
            color=colour,
            label=line["label"],
        )
        if line.get("points"):
            xs, ys = zip(*line["points"], strict=True)
            axis.scatter(xs, ys, s=12, alpha=0.4, color=colour)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    if series:
        axis.legend()
    return save_figure(figure, path, dpi=120)
