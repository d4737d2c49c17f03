"""Progress of long runs: a bar on a terminal, a plain line every so often in a log file.

    from ina.foundation.progress import progress

    for batch in progress(batches, desc="fitting", unit="batch"):
        ...

On a terminal (stderr is a tty) this is an ordinary tqdm bar. Otherwise (stderr redirected to a file, a
pipe, a CI log) the same tqdm object writes one line to stderr once the loop has run for
``INA_PROGRESS_SECONDS`` seconds (default 30), then at most once per that interval, and a last line when
it ends; a loop that ends sooner writes nothing::

    training: step 12/24 (50%), 1:20 elapsed, ETA 1:20, 6.67 s/step
    training: step 24/24 (100%), done in 2:40, 6.67 s/step

Every long command goes through this module: the Trainer's bars (`trainer_progress`), the runs of a
sweep, the passes of `ina export lora`, and lm-eval's request loops under `ina eval` (`tqdm_class`, for
code that builds its own bars). Nothing is printed with ``print``; tqdm writes to stderr.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from ina.foundation.errors import UsageError

__all__ = [
    "INTERVAL_VARIABLE",
    "interval",
    "on_terminal",
    "progress",
    "tqdm_class",
    "trainer_progress",
    "writing",
]

INTERVAL_VARIABLE = "INA_PROGRESS_SECONDS"
DEFAULT_SECONDS = 30.0
_CLASSES: dict[str, type] = {}


def interval() -> float:
    """Seconds between two progress lines in a log file: ``$INA_PROGRESS_SECONDS``, default 30."""
    text = os.environ.get(INTERVAL_VARIABLE, "").strip()
    if not text:
        return DEFAULT_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise UsageError(
            f"{INTERVAL_VARIABLE} must be a number of seconds ≥ 0 (0: a line at every step); got {text!r}"
        )
    return value


def on_terminal() -> bool:
    """Whether progress is drawn as a bar: stderr is a terminal."""
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def tqdm_class() -> type:
    """``tqdm`` on a terminal, else its subclass that writes plain periodic lines (see the module text)."""
    from tqdm.auto import tqdm

    if on_terminal():
        return tqdm
    if "lines" not in _CLASSES:
        _CLASSES["lines"] = _line_class(tqdm)
    return _CLASSES["lines"]


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    total: float | None = None,
    desc: str = "",
    unit: str = "it",
    leave: bool = True,
    disable: bool = False,
    initial: float = 0,
) -> Any:
    """A tqdm progress object (iterate it, or call ``update(n)`` and ``close()``) of the kind `tqdm_class` picks.

    ``initial`` counts work done before (resumed or skipped); the ETA is computed from the work done here.
    """
    return tqdm_class()(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        leave=leave,
        disable=disable,
        initial=initial,
        dynamic_ncols=True,
    )


@contextlib.contextmanager
def writing() -> Iterator[None]:
    """Print other lines inside this block without tearing a bar on the terminal (tqdm clears and redraws it)."""
    from tqdm.auto import tqdm

    with tqdm.external_write_mode():
        yield


def _line_class(base: type) -> type:
    class ProgressLines(base):  # type: ignore[misc, valid-type]
        """tqdm that writes a line to stderr every `interval` seconds instead of redrawing a bar."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            seconds = interval()
            kwargs.update(file=_Discard(), ascii=True, dynamic_ncols=False, miniters=1)
            kwargs.update(mininterval=seconds, maxinterval=math.inf, delay=seconds)
            super().__init__(*args, **kwargs)

        def display(self, msg: str | None = None, pos: int | None = None) -> bool:
            closing = bool(self.disable)  # close() disables the bar, then draws it a last time
            if msg is None and (
                closing or self.n != self.total
            ):  # msg "" only clears; the end is drawn by close()
                stream = sys.stderr
                stream.write(_line(self.format_dict, closing) + "\n")
                stream.flush()
            return True

    return ProgressLines


def _line(state: dict[str, Any], closing: bool) -> str:
    """``desc: step 12/24 (50%), 1:20 elapsed, ETA 1:20, 6.67 s/step`` from a tqdm ``format_dict``."""
    from tqdm import tqdm

    n, total, elapsed = state["n"], state["total"], state["elapsed"]
    unit = state.get("unit") or "it"
    done = n - (state.get("initial") or 0)
    count = f"{n:g}" if total is None else f"{n:g}/{total:g}"
    parts = [(count if unit == "it" else f"{unit} {count}")]
    if total:
        parts[0] += f" ({100 * n / total:.0f}%)"
    rate = done / elapsed if elapsed > 0 else 0.0
    if closing:
        parts.append(f"done in {tqdm.format_interval(elapsed)}")
    else:
        parts.append(f"{tqdm.format_interval(elapsed)} elapsed")
        if total is not None:
            eta = tqdm.format_interval((total - n) / rate) if rate > 0 else "?"
            parts.append(f"ETA {eta}")
    if rate > 0:
        parts.append(f"{rate:.3g} {unit}/s" if rate >= 1 else f"{1 / rate:.3g} s/{unit}")
    if state.get("postfix"):
        parts.append(str(state["postfix"]))
    prefix = state.get("prefix") or ""
    return (f"{prefix}: " if prefix else "") + ", ".join(parts)


class _Discard:
    """The file tqdm is given when it draws nothing itself."""

    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


def trainer_progress() -> Any:
    """A `transformers.TrainerCallback` in place of the Trainer's `ProgressCallback`: its bars through `progress`.

    On a terminal it looks like the Trainer's own; in a log file, training and evaluation write periodic
    lines with an ETA, and the Trainer's log dicts (loss, learning rate) are printed as before.
    """
    from transformers.trainer_callback import ProgressCallback
    from transformers.trainer_utils import has_length

    class TrainerProgress(ProgressCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.is_world_process_zero:
                self.training_bar = progress(
                    total=state.max_steps, desc="training", unit="step", initial=state.global_step
                )
            self.current_step = state.global_step

        def on_prediction_step(
            self, args: Any, state: Any, control: Any, eval_dataloader: Any = None, **kwargs: Any
        ) -> None:
            if state.is_world_process_zero and has_length(eval_dataloader):
                if self.prediction_bar is None:
                    self.prediction_bar = progress(
                        total=len(eval_dataloader),
                        desc="evaluating",
                        unit="batch",
                        leave=self.training_bar is None,
                    )
                self.prediction_bar.update(1)

    return TrainerProgress()
