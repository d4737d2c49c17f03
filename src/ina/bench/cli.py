"""`ina bench`: time InA against the frozen base and PEFT LoRA on one model, in one process."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `bench` to the `ina` parser."""
    bench = subparsers.add_parser(
        "bench",
        help="time training steps (and decoding) of the frozen base, PEFT LoRA and InA (reference and fast path)",
        description=(
            "Times forward + backward + AdamW steps of the frozen base, PEFT LoRA, InA on the reference path and "
            "InA on the fused path, on the same model, data and settings in one process; variants alternate "
            "every round, warm-up rounds are excluded; prints medians, spreads and ratios to the base, and "
            "writes JSON with --json. A benchmark, not a test: on a shared machine, repeat it."
        ),
    )
    source = bench.add_mutually_exclusive_group()
    source.add_argument(
        "--preset", choices=["tiny", "1b", "7b"], default=None,
        help="random-init LLaMA shapes: tiny (CPU), 1b (hidden 2048, 22 layers, 32 heads, 4 KV heads, "
        "intermediate 5632), 7b (LLaMA-2-7B); default tiny",
    )  # fmt: skip
    source.add_argument(
        "--model", default=None, help="a local causal-LM folder (loaded offline) instead of a preset"
    )
    bench.add_argument(
        "--targets", default="qv", help="qv (q_proj, v_proj), all-linear, or a comma list of module names"
    )
    bench.add_argument(
        "--steps", type=int, default=10, help="measured rounds (one step of each variant per round)"
    )
    bench.add_argument("--warmup", type=int, default=3, help="rounds run before measuring")
    bench.add_argument(
        "--batch", type=int, default=None, help="batch size (preset default: tiny 4, 1b 8, 7b 4)"
    )
    bench.add_argument(
        "--seq", type=int, default=None, help="sequence length (preset default: tiny 64, else 1024)"
    )
    bench.add_argument(
        "--dtype",
        default="auto",
        help="model dtype: auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16",
    )
    bench.add_argument(
        "--adapter-dtype", default="model", choices=["model", "float32"],
        help="adapter weights in the model's dtype, or float32 (PEFT's default autocast_adapter_dtype=True)",
    )  # fmt: skip
    bench.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    bench.add_argument("--compile", action="store_true", help="run every variant under torch.compile")
    bench.add_argument("--decode", action="store_true", help="also time greedy generate, batch 1 (ms/token)")
    bench.add_argument("--decode-tokens", type=int, default=32, help="new tokens per decode measurement")
    bench.add_argument("--decode-rounds", type=int, default=3, help="decode measurements per variant")
    bench.add_argument("--r", type=int, default=8, help="adapter rank")
    bench.add_argument("--lora-alpha", type=int, default=16)
    bench.add_argument("--dropout", type=float, default=0.05, help="lora_dropout of every adapter")
    bench.add_argument("--inhibition", type=float, default=0.3, help="ρ of the InA variants")
    bench.add_argument(
        "--variants", default="base,lora,ina-reference,ina-fast", help="comma list of the variants to run"
    )
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: 1 when benchmarking on CPU, torch's choice on CUDA)",
    )
    bench.add_argument("--json", default=None, metavar="PATH", help="write the full report as JSON here")
    bench.set_defaults(handler=_bench)


def _bench(args: argparse.Namespace) -> int:
    import sys

    from ina.bench.runner import BenchError, BenchSettings, format_table, run_bench, write_json

    settings = BenchSettings(
        preset=args.preset if args.preset or args.model else "tiny",
        model=args.model,
        targets=args.targets,
        steps=args.steps,
        warmup=args.warmup,
        batch=args.batch,
        seq=args.seq,
        dtype=args.dtype,
        adapter_dtype=args.adapter_dtype,
        device=args.device,
        compile=args.compile,
        decode=args.decode,
        decode_tokens=args.decode_tokens,
        decode_rounds=args.decode_rounds,
        r=args.r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.dropout,
        inhibition=args.inhibition,
        variants=[v.strip() for v in args.variants.split(",") if v.strip()],
        seed=args.seed,
        threads=args.threads,
    )
    try:
        report = run_bench(settings, log=lambda line: print(line, file=sys.stderr, flush=True))
    except BenchError as error:
        print(f"ina bench: {error}", file=sys.stderr)
        return 2
    print(format_table(report))
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
