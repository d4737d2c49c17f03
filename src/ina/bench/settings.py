"""What the benchmarks run: presets, and one settings dataclass per benchmark (the source of its flags).

Imports no framework, so that ``ina bench --help`` answers at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ina.foundation.arguments import flag_of
from ina.foundation.errors import UsageError

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
# (batch, sequence) when --batch / --seq are not given: per preset, and for --model (a local model of any size)
PRESET_BATCH: dict[str, tuple[int, int]] = {"tiny": (4, 64), "1b": (8, 1024), "7b": (4, 1024)}
MODEL_BATCH: tuple[int, int] = (1, 512)


def _shape_defaults(index: int) -> str:
    """``"tiny 4, 1b 8, 7b 4, --model 1"``: the defaults of --batch (0) or --seq (1), for the help."""
    return ", ".join(
        [*(f"{name} {shape[index]}" for name, shape in PRESET_BATCH.items()), f"--model {MODEL_BATCH[index]}"]
    )


TARGETS: dict[str, list[str] | str] = {"qv": ["q_proj", "v_proj"], "all-linear": "all-linear"}
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")


class BenchError(UsageError):
    """A benchmark setting that cannot work; the message names the flag and the fix."""


def comma_list(value: str) -> list[str]:
    """``"a, b,"`` → ``["a", "b"]``."""
    return [item.strip() for item in value.split(",") if item.strip()]


def _raise_problems(command: str, problems: list[str]) -> None:
    if problems:
        raise BenchError(f"invalid `{command}` settings:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass
class BenchSettings:
    """What `ina bench` times; each field is one flag. Neither preset nor model: the tiny preset."""

    preset: str | None = field(
        default=None,
        metadata={
            "choices": list(PRESETS),
            "exclusive": "source",
            "help": "random-init LLaMA shapes: tiny (CPU), 1b (hidden 2048, 22 layers, 32 heads, 4 KV heads, "
            "intermediate 5632), 7b (LLaMA-2-7B); default tiny",
        },
    )
    model: str | None = field(
        default=None,
        metadata={
            "exclusive": "source",
            "help": "a local causal-LM folder (loaded offline) instead of a preset",
        },
    )
    targets: str = field(
        default="qv", metadata={"help": "qv (q_proj, v_proj), all-linear, or a comma list of module names"}
    )
    steps: int = field(default=10, metadata={"help": "measured rounds (one step of each variant per round)"})
    warmup: int = field(default=3, metadata={"help": "rounds run before measuring"})
    batch: int | None = field(default=None, metadata={"help": f"batch size (default: {_shape_defaults(0)})"})
    seq: int | None = field(
        default=None, metadata={"help": f"sequence length (default: {_shape_defaults(1)})"}
    )
    dtype: str = field(
        default="auto",
        metadata={
            "help": "model dtype: auto (bfloat16 on a GPU that supports it, float32 on CPU), float32, bfloat16, "
            "float16"
        },
    )
    adapter_dtype: str = field(
        default="model",
        metadata={
            "choices": ["model", "float32"],
            "help": "adapter weights in the model's dtype, or float32 (PEFT's default autocast_adapter_dtype=True)",
        },
    )
    device: str = field(default="auto", metadata={"choices": ["auto", "cpu", "cuda"]})
    compile: bool = field(default=False, metadata={"help": "run every variant under torch.compile"})
    decode: bool = field(default=False, metadata={"help": "also time greedy generate, batch 1 (ms/token)"})
    decode_tokens: int = field(default=32, metadata={"help": "new tokens per decode measurement"})
    decode_rounds: int = field(default=3, metadata={"help": "decode measurements per variant"})
    r: int = field(default=8, metadata={"help": "adapter rank"})
    lora_alpha: int = field(default=16)
    lora_dropout: float = field(
        default=0.05,
        metadata={
            "flag": "--dropout",
            "aliases": ["--lora_dropout"],
            "metavar": "DROPOUT",
            "help": "lora_dropout of every adapter",
        },
    )
    inhibition: float = field(default=0.3, metadata={"help": "ρ of the InA variants"})
    variants: list[str] = field(
        default_factory=lambda: list(VARIANTS),
        metadata={"parse": comma_list, "help": "comma list of the variants to run"},
    )
    seed: int = 0
    # CPU threads; None: 1 on CPU (a small model's ops are too short to share between threads, and on a
    # shared machine OpenMP threads waiting for a busy core made steps 100× slower), torch's choice on CUDA
    threads: int | None = field(
        default=None,
        metadata={
            "help": "CPU threads for torch (default: 1 when benchmarking on CPU, torch's choice on CUDA)"
        },
    )

    def __post_init__(self) -> None:
        if self.preset is None and self.model is None:
            self.preset = "tiny"
        self.validate()

    def validate(self) -> None:
        """Raise `BenchError` listing every problem, if there is one."""
        _raise_problems("ina bench", self.problems())

    def batch_shape(self) -> tuple[int, int]:
        """(batch, sequence length): --batch / --seq, else the default of the preset or of --model."""
        default = (
            MODEL_BATCH if self.model is not None else PRESET_BATCH.get(self.preset or "tiny", MODEL_BATCH)
        )
        return (self.batch or default[0], self.seq or default[1])

    def problems(self) -> list[str]:
        """Every invalid setting, as messages naming the flag, the rule and the value."""
        from ina.foundation.models import resolve_device

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
                out.append(f"{flag_of(BenchSettings, name)} must be ≥ 1; got {getattr(self, name)}")
        if self.decode and self.decode_tokens < 2:
            out.append(f"--decode_tokens must be ≥ 2 (one is the prefill); got {self.decode_tokens}")
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
            out.append(f"--adapter_dtype must be model or float32; got {self.adapter_dtype!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            out.append(f"--device must be auto, cpu or cuda; got {self.device!r}")
        else:
            try:  # the one wording of a device this machine lacks, as every command says it
                resolve_device(self.device)
            except UsageError as error:
                out.append(str(error))
        if not 0 <= self.lora_dropout < 1:
            out.append(f"--dropout must be in [0, 1); got {self.lora_dropout}")
        # ρ = 0 is the `lora` variant, so the InA variants need ρ > 0 (InAConfig checks ρ < 1 again).
        if not 0 < self.inhibition < 1:
            out.append(f"--inhibition must be in (0, 1) (0 is the LoRA variant); got {self.inhibition}")
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants:
            out.append(
                f"--variants must be a non-empty comma list of {list(VARIANTS)}; got {self.variants!r}"
            )
        return out


@dataclass
class ServeBenchSettings:
    """What `ina bench serve` measures; each field is one flag. Exactly one of url, base_model, tiny."""

    url: str | None = field(
        default=None, metadata={"exclusive": "server", "help": "benchmark a running server"}
    )
    base_model: str | None = field(
        default=None,
        metadata={"exclusive": "server", "help": "start `ina serve` on this base model (and each --adapter)"},
    )
    tiny: bool = field(
        default=False,
        metadata={"exclusive": "server", "help": "start `ina serve` on a tiny random model + 2 adapters"},
    )
    adapters: list[str] = field(
        default_factory=list, metadata={"flag": "--adapter", "append": True, "metavar": "NAME=PATH"}
    )
    api_key: str | None = None
    concurrency: list[int] = field(default_factory=lambda: [1, 8, 32])
    requests_per_client: int = 4
    max_tokens: int = 32
    num_threads: int | None = field(
        default=None, metadata={"help": "torch CPU threads of the server this benchmark starts"}
    )
    port: int = field(
        default=0,
        metadata={"help": "loopback port of the server this benchmark starts (default 0: any free port)"},
    )
    adapter_counts: list[int] = field(
        default_factory=list,
        metadata={
            "flag": "--adapters",
            "metavar": "N",
            "help": "compare numbers of adapters in use, e.g. `--adapters 1 8`: the server holds max(N) adapters "
            "(copies of the first --adapter, or demo InA adapters made on the base), each level spreads its "
            "clients over the first N; levels alternate over --repeats rounds; ratios against the smallest N",
        },
    )
    repeats: int = field(default=3, metadata={"help": "rounds of every (clients, --adapters) level; medians"})
    peft_path: bool = field(
        default=False,
        metadata={
            "help": "start the server with INA_GATHERED=0: mixed batches through PEFT, one adapter at a time "
            "(for comparison)"
        },
    )

    def __post_init__(self) -> None:
        _raise_problems("ina bench serve", self.problems())

    def problems(self) -> list[str]:
        """Every invalid setting, as messages naming the flag, the rule and the value."""
        out = []
        sources = [self.url is not None, self.base_model is not None, self.tiny]
        if sum(sources) != 1:
            out.append(
                f"give exactly one of --url, --base_model and --tiny; got url={self.url!r}, "
                f"base_model={self.base_model!r}, tiny={self.tiny}"
            )
        if not self.concurrency or min(self.concurrency) < 1:
            out.append(f"--concurrency must be one or more numbers ≥ 1; got {self.concurrency}")
        for name in ("requests_per_client", "max_tokens"):
            if getattr(self, name) < 1:
                out.append(f"--{name} must be ≥ 1; got {getattr(self, name)}")
        if self.num_threads is not None and self.num_threads < 0:
            out.append(f"--num_threads must be ≥ 1 (0: torch's choice); got {self.num_threads}")
        if self.adapter_counts and min(self.adapter_counts) < 1:
            out.append(f"--adapters must be one or more numbers ≥ 1; got {self.adapter_counts}")
        if self.repeats < 1:
            out.append(f"--repeats must be ≥ 1; got {self.repeats}")
        if self.peft_path and self.url is not None:
            out.append("--peft_path sets the environment of the server this benchmark starts; drop --url")
        if self.port and self.url is not None:
            out.append(
                f"--port {self.port} is the port of the server this benchmark starts; drop --port or --url"
            )
        elif not 0 <= self.port <= 65535:
            out.append(f"--port must be an integer in 0..65535 (0: any free port); got {self.port}")
        elif self.port and (problem := _port_taken(self.port)):
            out.append(problem)
        return out


def _port_taken(port: int) -> str | None:
    """Why the benchmark's server could not listen on 127.0.0.1:``port``, or None when it can."""
    import errno
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return (
                    f"--port {port} is already in use on 127.0.0.1; stop what listens there, choose another "
                    "--port, or leave it out (any free port)"
                )
            return (
                f"--port {port}: cannot listen on 127.0.0.1 ({error.strerror or error}); choose a --port of "
                "1024 or more, or leave it out"
            )
    return None
