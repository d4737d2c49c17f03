"""lm-evaluation-harness on a base causal LM and each of its adapters: one model loaded, adapters switched.

    results = evaluate(EvalOptions(base_model="smollm", adapters={"ina": Path("outputs/ina-finetune-smollm2")}))

The base is loaded once with every adapter unmerged (`ina.foundation.models.load_with_adapters`, so
InA, the authors' format and plain LoRA all load, and InA runs its gate); lm-eval's ``HFLM`` is given
that model, and each adapter in turn is made the active one (the base: adapters switched off).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ina.foundation.errors import UsageError, one_line

TASK_DIR = Path(__file__).parent / "tasks"
#: The tasks shipped with ina, built from the embedded data (offline), and the tag naming them all.
OFFLINE_TASKS: tuple[str, ...] = ("ina_sentiment_en", "ina_sentiment_zh", "ina_instructions")
OFFLINE_TAG = "ina_offline"
BASE = "base"  # the row name of the model without adapters


@dataclass
class EvalOptions:
    """What `evaluate` runs; the command line's flags one to one."""

    base_model: str = ""
    adapters: dict[str, Path] = field(default_factory=dict)
    tasks: list[str] = field(default_factory=lambda: list(OFFLINE_TASKS))
    include_path: list[str] = field(default_factory=list)
    limit: float | None = None
    num_fewshot: int | None = None
    batch_size: int = 8
    apply_chat_template: str = "auto"  # auto, yes, no
    device: str = "auto"
    dtype: str = "auto"
    torch_threads: int | None = None
    seed: int = 0


def offline() -> bool:
    """Whether Hugging Face hub access is switched off (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``)."""
    return any(
        os.environ.get(name, "").lower() in ("1", "true", "yes")
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def _not_offline(name: str) -> UsageError:
    return UsageError(
        f"--tasks {name!r} is not available offline (lm-eval reads its data from the Hugging Face hub); the "
        f"offline tasks are {', '.join(OFFLINE_TASKS)} (or the tag {OFFLINE_TAG}); go online, or give a task "
        "YAML whose data are local files (--include_path DIR)"
    )


def _is_offline_task(name: str) -> bool:
    return name in OFFLINE_TASKS or name == OFFLINE_TAG


def task_manager(options: EvalOptions) -> Any:
    """lm-eval's `TaskManager` with ina's tasks and ``--include_path``, and lm-eval's own when online.

    Every task is built here, before a model is loaded: an unknown name or one whose data cannot be read
    is a `UsageError` (offline: saying it is not available offline, with the offline tasks).
    """
    from lm_eval.tasks import TaskManager

    for folder in options.include_path:
        if not Path(folder).is_dir():
            raise UsageError(
                f"--include_path {folder!r} is not a folder; give a folder of lm-eval task YAMLs"
            )
    files = [name for name in options.tasks if name.endswith((".yaml", ".yml"))]
    for file in files:
        if not Path(file).is_file():
            raise UsageError(
                f"--tasks {file!r}: no such task YAML file; give an existing file or a task name"
            )
    names = [name for name in options.tasks if name not in files]
    # lm-eval's own tasks read the hub: offline, only ina's tasks and the user's folders are indexed.
    own = all(_is_offline_task(name) for name in names)
    manager = TaskManager(
        include_path=[str(TASK_DIR), *options.include_path], include_defaults=not own and not offline()
    )
    for name in names:
        if name not in manager.all_tasks:
            if offline():
                raise _not_offline(name)
            raise UsageError(
                f"--tasks {name!r} is not an lm-eval task, group or tag (nor one of ina's: "
                f"{', '.join(OFFLINE_TASKS)}); see `lm-eval ls tasks`, or give a task YAML or --include_path DIR"
            )
    for name in options.tasks:  # build each task now (its data read or downloaded), before any model loads
        try:
            with _quiet_lm_eval():
                manager.load([name])
        except (ConnectionError, OSError, ValueError, KeyError) as error:
            if offline() and not _is_offline_task(name):
                raise _not_offline(name) from error
            raise UsageError(
                f"--tasks {name!r}: lm-eval cannot build it ({one_line(error)[:300]})"
            ) from error
    return manager


def chat_template_on(options: EvalOptions, tokenizer: Any) -> bool:
    """``--apply_chat_template``: yes/no; auto means yes for ina's own tasks when the tokenizer has a template.

    ina's tasks are instructions, as `ina finetune` trains them; lm-eval's tasks are scored without a
    chat template unless asked (lm-eval's default, comparable with published numbers).
    """
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if options.apply_chat_template == "yes" and not has_template:
        raise UsageError(
            "--apply_chat_template yes: this model's tokenizer has no chat template; use no (or auto)"
        )
    if options.apply_chat_template in ("yes", "no"):
        return options.apply_chat_template == "yes"
    return has_template and all(_is_offline_task(name) for name in options.tasks)


def base_model_name(options: EvalOptions) -> str:
    """``--base_model``, else the base recorded in the first adapter, else the embedded SmolLM2."""
    from ina.foundation.models import resolve_base_model

    if options.base_model or not options.adapters:
        return resolve_base_model(options.base_model)
    from ina.core.loading import read_adapter_config

    recorded = read_adapter_config(next(iter(options.adapters.values()))).base_model_name_or_path
    return resolve_base_model(recorded or "")


def evaluate(options: EvalOptions, log: Any = None) -> dict[str, Any]:
    """Run the tasks on the base and on each adapter; returns the results (see `ina.evaluate.report`)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from ina.foundation.adapters import BASE_ADAPTER, using_adapter
    from ina.foundation.models import load_with_adapters, torch_threads

    log = log or logging.getLogger(__name__).info
    if any(_is_offline_task(name) for name in options.tasks):
        from ina.evaluate.heldout import ensure_data

        try:
            ensure_data()  # built once, before lm-eval reads it (offline from the cached archives)
        except RuntimeError as error:
            raise UsageError(
                f"--tasks: ina's offline task data cannot be built: {one_line(error)}"
            ) from error
    manager = task_manager(options)
    name = base_model_name(options)
    started = time.time()
    with torch_threads(options.torch_threads):
        model, tokenizer = load_with_adapters(
            name, options.adapters, dtype=options.dtype, device=options.device
        )
        chat = chat_template_on(options, tokenizer)
        with _quiet_lm_eval():
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=options.batch_size, backend="causal")
        results: dict[str, Any] = {}
        seconds: dict[str, float] = {}
        for row in [BASE, *options.adapters]:
            log(f"evaluating {row} on {', '.join(options.tasks)}")
            begun = time.time()
            with (
                using_adapter(model, BASE_ADAPTER if row == BASE else row),
                _quiet_lm_eval(),
                _lm_eval_progress(),
            ):
                output = lm_eval.simple_evaluate(
                    model=lm,
                    tasks=list(options.tasks),
                    task_manager=manager,
                    limit=options.limit,
                    num_fewshot=options.num_fewshot,
                    apply_chat_template=chat,
                    log_samples=False,
                    bootstrap_iters=1000,
                    random_seed=options.seed,
                    numpy_random_seed=options.seed,
                    torch_random_seed=options.seed,
                    fewshot_random_seed=options.seed,
                )
            results[row] = _metrics(output)
            seconds[row] = round(time.time() - begun, 1)
    return {
        "base_model": name,
        "adapters": {adapter: str(path) for adapter, path in options.adapters.items()},
        "tasks": list(options.tasks),
        "settings": {
            "limit": options.limit,
            "num_fewshot": options.num_fewshot,
            "batch_size": options.batch_size,
            "apply_chat_template": chat,
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "device": str(next(model.parameters()).device),
            "seed": options.seed,
            "lm_eval_version": getattr(lm_eval, "__version__", "unknown"),
        },
        "results": results,
        "runtime_s": {**seconds, "total": round(time.time() - started, 1)},
    }


def _metrics(output: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{task: {metric: {"value", "stderr", "higher_is_better", "samples"}}}`` from `simple_evaluate`'s output."""
    better = output.get("higher_is_better", {})
    samples = output.get("n-samples", {})
    metrics: dict[str, dict[str, dict[str, Any]]] = {}
    for task, values in output["results"].items():
        for key, value in values.items():
            metric, _, filter_name = key.partition(",")
            if not filter_name or "_stderr" in metric or not isinstance(value, int | float):
                continue
            label = metric if filter_name == "none" else f"{metric} ({filter_name})"
            stderr = values.get(f"{metric}_stderr,{filter_name}")
            metrics.setdefault(task, {})[label] = {
                "value": float(value),
                "stderr": float(stderr) if isinstance(stderr, int | float) else None,
                "higher_is_better": better.get(task, {}).get(metric),
                "samples": samples.get(task, {}).get("effective"),
            }
    return metrics


class _quiet_lm_eval:
    """lm-eval logs every request batch at INFO and warns about a pre-built model; show warnings only."""

    def __enter__(self) -> None:
        self._logger = logging.getLogger("lm_eval")
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)

    def __exit__(self, *_: Any) -> None:
        self._logger.setLevel(self._level)


class _lm_eval_progress:
    """lm-eval's request bars through `ina.foundation.progress`: a bar on a terminal, else periodic lines
    with an ETA (lm-eval builds its bars with the ``tqdm`` its model module imported; swapped here, restored after)."""

    def __enter__(self) -> None:
        from lm_eval.models import huggingface

        from ina.foundation.progress import tqdm_class

        self._module, self._tqdm = huggingface, huggingface.tqdm
        huggingface.tqdm = tqdm_class()

    def __exit__(self, *_: Any) -> None:
        self._module.tqdm = self._tqdm
