"""Time training steps (and decoding) of a frozen base, PEFT LoRA and InA on one model, in one process.

Every variant runs on the same model object, the same batch and the same settings:

* ``base`` — the frozen model with the adapter layers swapped out for their base layers;
* ``lora`` — PEFT's own LoRA forward (an adapter with ρ = 0 has no InA variant, so PEFT's
  ``lora.Linear.forward`` runs unchanged: ``result + lora_B(lora_A(dropout(x))) * scaling``);
* ``ina-reference`` — InA with ``ρ > 0`` on the reference path (:func:`ina.inhibit` between PEFT's modules);
* ``ina-fast`` — the same adapter on the fused path (:mod:`ina.core.fast`).

A training step is forward + backward + AdamW step + ``zero_grad`` (the base has no trainable
parameters, so it runs forward + backward only; the embeddings' output requires grad in every
variant, so the backward pass always runs through the whole network). Variants alternate every round,
in a rotated order; warm-up rounds are excluded; the median and spread of the measured steps are
reported. Memory: on CUDA the peak of ``torch.cuda.max_memory_allocated`` during a variant's steps;
everywhere, the bytes saved for backward (unique storages, parameters excluded) in one extra step.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

VARIANTS: tuple[str, ...] = ("base", "lora", "ina-reference", "ina-fast")

# Random-init LLaMA shapes. tiny: for CPUs; 1b: TinyLlama-1.1B; 7b: LLaMA-2-7B.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(
        hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=1024,
    ),
    "1b": dict(
        hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
        num_key_value_heads=4, vocab_size=32000,
    ),
    "7b": dict(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, vocab_size=32000,
    ),
}  # fmt: skip
# (batch, sequence) when --batch / --seq are not given
PRESET_BATCH: dict[str, tuple[int, int]] = {"tiny": (4, 64), "1b": (8, 1024), "7b": (4, 1024)}
TARGETS: dict[str, list[str] | str] = {"qv": ["q_proj", "v_proj"], "all-linear": "all-linear"}
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


class BenchError(ValueError):
    """A benchmark setting that cannot work; the message names the flag and the fix."""


@dataclass
class BenchSettings:
    """What to benchmark; each field is one `ina bench` flag."""

    preset: str | None = "tiny"
    model: str | None = None
    targets: str = "qv"
    steps: int = 10
    warmup: int = 3
    batch: int | None = None
    seq: int | None = None
    dtype: str = "auto"
    adapter_dtype: str = "model"
    device: str = "auto"
    compile: bool = False
    decode: bool = False
    decode_tokens: int = 32
    decode_rounds: int = 3
    r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    inhibition: float = 0.3
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    seed: int = 0
    # CPU threads; None: 1 on CPU (a small model's ops are too short to share between threads, and on a
    # shared machine OpenMP threads waiting for a busy core made steps 100× slower), torch's choice on CUDA
    threads: int | None = None

    def problems(self) -> list[str]:
        """Every invalid setting, as messages naming the flag, the rule and the value."""
        out = []
        if (self.preset is None) == (self.model is None):
            out.append(
                f"give exactly one of --preset and --model; got preset={self.preset!r}, model={self.model!r}"
            )
        if self.preset is not None and self.preset not in PRESETS:
            out.append(f"--preset must be one of {sorted(PRESETS)}; got {self.preset!r}")
        if self.targets not in TARGETS and not all(self.targets.split(",")):
            out.append(
                f"--targets must be qv, all-linear or a comma list of module names; got {self.targets!r}"
            )
        for name in ("steps", "decode_tokens", "decode_rounds", "r", "lora_alpha"):
            if getattr(self, name) < 1:
                out.append(f"--{name.replace('_', '-')} must be ≥ 1; got {getattr(self, name)}")
        if self.decode and self.decode_tokens < 2:
            out.append(f"--decode-tokens must be ≥ 2 (one is the prefill); got {self.decode_tokens}")
        if self.threads is not None and self.threads < 1:
            out.append(f"--threads must be ≥ 1; got {self.threads}")
        if self.warmup < 0:
            out.append(f"--warmup must be ≥ 0; got {self.warmup}")
        for name in ("batch", "seq"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                out.append(f"--{name} must be ≥ 1; got {getattr(self, name)}")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            out.append(f"--dtype must be auto or one of {sorted(DTYPES)}; got {self.dtype!r}")
        if self.adapter_dtype not in ("model", "float32"):
            out.append(f"--adapter-dtype must be model or float32; got {self.adapter_dtype!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            out.append(f"--device must be auto, cpu or cuda; got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            out.append("--device cuda needs a CUDA device, and none is available; use --device cpu")
        if not 0 <= self.lora_dropout < 1:
            out.append(f"--dropout must be in [0, 1); got {self.lora_dropout}")
        if not 0 < self.inhibition < 1:
            out.append(f"--inhibition must be in (0, 1) (0 is the LoRA variant); got {self.inhibition}")
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants:
            out.append(
                f"--variants must be a non-empty comma list of {list(VARIANTS)}; got {self.variants!r}"
            )
        return out


@dataclass
class Spread:
    """Median and spread of repeated measurements (milliseconds)."""

    median: float
    q1: float
    q3: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        if len(values) == 1:
            v = values[0]
            return cls(v, v, v, v, v, 1)
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
        return cls(statistics.median(values), q1, q3, min(values), max(values), len(values))


@dataclass
class VariantResult:
    """One variant's measurements."""

    name: str
    trainable_parameters: int
    step_ms: Spread | None = None
    step_ms_all: list[float] = field(default_factory=list)
    step_cpu_ms: Spread | None = None
    step_cpu_ms_all: list[float] = field(default_factory=list)
    peak_memory_bytes: int | None = None
    saved_for_backward_bytes: int | None = None
    decode_ms_per_token: Spread | None = None
    note: str = ""


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[setting]


def build_model(settings: BenchSettings, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """The causal LM to benchmark: a random-init preset, or a local model folder (offline)."""
    import transformers

    if settings.model is not None:
        model = transformers.AutoModelForCausalLM.from_pretrained(settings.model, dtype=dtype)
        return model.to(device)
    config = transformers.LlamaConfig(
        **PRESETS[settings.preset],
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(settings.seed)
    with torch.device(device):
        model = transformers.LlamaForCausalLM(config)
    return model.to(dtype)


def _adapter_config(settings: BenchSettings, inhibition: float) -> Any:
    from ina import InAConfig

    targets = TARGETS.get(settings.targets) or settings.targets.split(",")
    return InAConfig(
        r=settings.r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=targets,
        inhibition=inhibition,
        task_type="CAUSAL_LM",
    )


class Bench:
    """The model with both adapters, and a way to switch between the variants."""

    def __init__(self, settings: BenchSettings) -> None:
        from peft import get_peft_model

        self.settings = settings
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        model = build_model(settings, self.device, self.dtype)
        model.enable_input_require_grads()  # the frozen base still back-propagates through every layer
        model.config.use_cache = False
        autocast_adapter = settings.adapter_dtype == "float32"
        self.peft_model = get_peft_model(
            model,
            _adapter_config(settings, 0.0),
            adapter_name="plain",
            autocast_adapter_dtype=autocast_adapter,
        )
        self.peft_model.add_adapter(
            "inhibited",
            _adapter_config(settings, settings.inhibition),
            autocast_adapter_dtype=autocast_adapter,
        )
        self.model = self.peft_model.get_base_model()
        self.adapted = self._adapted_layers()
        self.compiled: nn.Module | None = None
        if settings.compile:
            import torch._dynamo as dynamo

            dynamo.config.cache_size_limit = max(dynamo.config.cache_size_limit, 16)
            self.compiled = torch.compile(self.model)
        self.optimizers: dict[str, torch.optim.Optimizer | None] = {}
        generator = torch.Generator().manual_seed(settings.seed)
        vocab = self.model.config.vocab_size
        batch, seq = self.batch_shape()
        self.input_ids = torch.randint(3, vocab, (batch, seq), generator=generator).to(self.device)

    def batch_shape(self) -> tuple[int, int]:
        default = PRESET_BATCH.get(self.settings.preset or "", (1, 512))
        return (self.settings.batch or default[0], self.settings.seq or default[1])

    def _adapted_layers(self) -> list[tuple[nn.Module, str, nn.Module]]:
        from peft.tuners.lora import LoraLayer

        found = []
        for module in self.model.modules():
            for child_name, child in module.named_children():
                if isinstance(child, LoraLayer):
                    found.append((module, child_name, child))
        return found

    @contextlib.contextmanager
    def variant(self, name: str) -> Iterator[None]:
        """Set the model up as variant ``name`` for the duration of the block."""
        from ina.core import fast

        if name == "base":
            for parent, child_name, layer in self.adapted:
                setattr(parent, child_name, layer.get_base_layer())
            try:
                yield
            finally:
                for parent, child_name, layer in self.adapted:
                    setattr(parent, child_name, layer)
            return
        self.peft_model.base_model.set_adapter("plain" if name == "lora" else "inhibited")
        with fast.enabled(name == "ina-fast"):
            yield

    def optimizer(self, name: str) -> torch.optim.Optimizer | None:
        if name not in self.optimizers:
            params = [p for p in self.model.parameters() if p.requires_grad]
            self.optimizers[name] = torch.optim.AdamW(params, lr=1e-4) if params else None
        return self.optimizers[name]

    def trainable(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def forward_model(self) -> nn.Module:
        return self.compiled if self.compiled is not None else self.model

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def train_step(self, name: str) -> tuple[float, float]:
        """One training step of the active variant: (wall seconds, CPU seconds of this process)."""
        optimizer = self.optimizer(name)
        model = self.forward_model()
        self.sync()
        start, start_cpu = time.perf_counter(), time.process_time()
        loss = model(input_ids=self.input_ids, labels=self.input_ids).loss
        loss.backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        self.sync()
        return time.perf_counter() - start, time.process_time() - start_cpu

    def saved_for_backward(self, name: str) -> int:
        """Bytes kept for backward in one forward pass (unique storages, parameters excluded)."""
        parameters = {p.untyped_storage().data_ptr() for p in self.model.parameters()}
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            if storage.data_ptr() not in parameters:
                seen[storage.data_ptr()] = storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = self.model(input_ids=self.input_ids, labels=self.input_ids).loss
        loss.backward()
        optimizer = self.optimizer(name)
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        return sum(seen.values())

    def decode_intervals(self, new_tokens: int) -> list[float]:
        """Seconds between successive tokens of one greedy ``generate`` (batch 1): the prefill is excluded."""
        from transformers import LogitsProcessor, LogitsProcessorList

        bench = self
        stamps: list[float] = []

        class Clock(LogitsProcessor):
            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
                bench.sync()
                stamps.append(time.perf_counter())
                return scores

        self.model.generate(
            self.input_ids[:1, :16],
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=0,
            logits_processor=LogitsProcessorList([Clock()]),
        )
        return [b - a for a, b in itertools.pairwise(stamps)]


def _rotated(names: list[str], round_index: int) -> list[str]:
    k = round_index % len(names)
    return names[k:] + names[:k]


def run_bench(settings: BenchSettings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the benchmark and return its report (settings, environment, per-variant results, ratios)."""
    problems = settings.problems()
    if problems:
        raise BenchError("invalid `ina bench` settings:\n" + "\n".join(f"  - {p}" for p in problems))
    previous_threads = torch.get_num_threads()
    threads = settings.threads
    if threads is None and resolve_device(settings.device).type == "cpu":
        threads = 1  # see BenchSettings.threads
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run(settings, log)
    finally:
        torch.set_num_threads(previous_threads)


def _run(settings: BenchSettings, log: Callable[[str], None]) -> dict[str, Any]:
    bench = Bench(settings)
    names = [v for v in VARIANTS if v in settings.variants]
    results: dict[str, VariantResult] = {}
    for name in names:
        with bench.variant(name):
            results[name] = VariantResult(name, bench.trainable())
    if settings.compile and "ina-fast" in names:
        results[
            "ina-fast"
        ].note = "under torch.compile the fused path defers to the compiler: same as ina-reference"
    batch, seq = bench.batch_shape()
    log(
        f"ina bench: {settings.model or settings.preset} on {describe_device(bench.device)}, {bench.dtype}, "
        f"batch {batch} × seq {seq}, targets {settings.targets}, r={settings.r}, dropout={settings.lora_dropout}, "
        f"{'compiled' if settings.compile else 'eager'}; {settings.warmup} warm-up + {settings.steps} rounds"
    )
    bench.model.train()
    peaks: dict[str, int] = {}
    for round_index in range(settings.warmup + settings.steps):
        for name in _rotated(names, round_index):
            with bench.variant(name):
                if bench.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(bench.device)
                seconds, cpu_seconds = bench.train_step(name)
                if round_index >= settings.warmup:
                    results[name].step_ms_all.append(seconds * 1000)
                    results[name].step_cpu_ms_all.append(cpu_seconds * 1000)
                    if bench.device.type == "cuda":
                        peaks[name] = max(peaks.get(name, 0), torch.cuda.max_memory_allocated(bench.device))
        if round_index == settings.warmup - 1 or (settings.warmup == 0 and round_index == 0):
            log("  warm-up done" if settings.warmup else "  (no warm-up)")
    for name in names:
        results[name].step_ms = Spread.of(results[name].step_ms_all)
        results[name].step_cpu_ms = Spread.of(results[name].step_cpu_ms_all)
        results[name].peak_memory_bytes = peaks.get(name)
        with bench.variant(name):
            results[name].saved_for_backward_bytes = bench.saved_for_backward(name)
    if settings.decode:
        bench.model.eval()
        bench.model.config.use_cache = True
        per_token: dict[str, list[float]] = {name: [] for name in names}
        with torch.no_grad():
            for name in names:  # warm-up
                with bench.variant(name):
                    bench.decode_intervals(2)
            for round_index in range(settings.decode_rounds):
                for name in _rotated(names, round_index):
                    with bench.variant(name):
                        per_token[name] += [1000 * t for t in bench.decode_intervals(settings.decode_tokens)]
        for name in names:
            results[name].decode_ms_per_token = Spread.of(per_token[name])
    return make_report(settings, bench, results)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


def make_report(settings: BenchSettings, bench: Bench, results: dict[str, VariantResult]) -> dict[str, Any]:
    base = results.get("base")
    lora = results.get("lora")
    ratios: dict[str, dict[str, float | None]] = {}
    for name, r in results.items():
        ratios[name] = {
            "step_vs_base": _ratio(
                r.step_ms and r.step_ms.median, base and base.step_ms and base.step_ms.median
            ),
            "step_vs_lora": _ratio(
                r.step_ms and r.step_ms.median, lora and lora.step_ms and lora.step_ms.median
            ),
            "step_cpu_vs_base": _ratio(
                r.step_cpu_ms and r.step_cpu_ms.median, base and base.step_cpu_ms and base.step_cpu_ms.median
            ),
            "step_cpu_vs_lora": _ratio(
                r.step_cpu_ms and r.step_cpu_ms.median, lora and lora.step_cpu_ms and lora.step_cpu_ms.median
            ),
            "peak_memory_vs_base": _ratio(r.peak_memory_bytes, base and base.peak_memory_bytes),
            "saved_for_backward_vs_base": _ratio(
                r.saved_for_backward_bytes, base and base.saved_for_backward_bytes
            ),
            "decode_vs_base": _ratio(
                r.decode_ms_per_token and r.decode_ms_per_token.median,
                base and base.decode_ms_per_token and base.decode_ms_per_token.median,
            ),
        }
    batch, seq = bench.batch_shape()
    return {
        "settings": asdict(settings),
        "environment": {
            "device": describe_device(bench.device),
            "dtype": str(bench.dtype).removeprefix("torch."),
            "batch": batch,
            "seq": seq,
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "memory_measured": (
                "torch.cuda.max_memory_allocated per step (max over steps); saved_for_backward: unique storages "
                "kept for backward in one forward, parameters excluded"
                if bench.device.type == "cuda"
                else "saved_for_backward only: unique storages kept for backward in one forward, parameters "
                "excluded (no peak-memory counter on CPU)"
            )
            + ("; saved_for_backward is measured in eager mode" if settings.compile else ""),
        },
        "variants": {name: asdict(r) for name, r in results.items()},
        "ratios": ratios,
    }


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def format_table(report: dict[str, Any]) -> str:
    """The report as a Markdown table: medians, spreads and ratios against the frozen base."""
    rows = [
        "| variant | trainable | step ms, median [IQR] | × base | × LoRA | CPU ms | × base | × LoRA | peak MiB | × base | saved MiB | × base "
        "| decode ms/token | × base |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    mib = 1 / 2**20
    for name, r in report["variants"].items():
        ratio = report["ratios"][name]
        step = r["step_ms"]
        decode = r["decode_ms_per_token"]
        peak = r["peak_memory_bytes"]
        saved = r["saved_for_backward_bytes"]
        rows.append(
            "| "
            + " | ".join(
                [
                    name,
                    f"{r['trainable_parameters']:,}",
                    f"{step['median']:.1f} [{step['q1']:.1f}, {step['q3']:.1f}]" if step else "—",
                    _fmt(ratio["step_vs_base"], ".3f"),
                    _fmt(ratio["step_vs_lora"], ".3f"),
                    f"{r['step_cpu_ms']['median']:.1f}" if r["step_cpu_ms"] else "—",
                    _fmt(ratio["step_cpu_vs_base"], ".3f"),
                    _fmt(ratio["step_cpu_vs_lora"], ".3f"),
                    _fmt(peak * mib if peak else None, ".0f"),
                    _fmt(ratio["peak_memory_vs_base"], ".3f"),
                    _fmt(saved * mib if saved is not None else None, ".1f"),
                    _fmt(ratio["saved_for_backward_vs_base"], ".3f"),
                    f"{decode['median']:.2f}" if decode else "—",
                    _fmt(ratio["decode_vs_base"], ".3f"),
                ]
            )
            + " |"
        )
    notes = [f"- {name}: {r['note']}" for name, r in report["variants"].items() if r["note"]]
    return "\n".join(rows + notes)


def write_json(report: dict[str, Any], path: str) -> None:
    """Write ``report`` to ``path`` atomically (a temporary file in the same folder, then a rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".bench-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
