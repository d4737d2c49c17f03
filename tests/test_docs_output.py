"""The tables the docs show as a command's output have the columns that command prints.

A table in README.md or docs/*.md that shows what a command prints carries, on the line above it (blank
lines allowed), ``<!-- printed by: ina COMMAND FLAGS -->``. Each is checked by running that command with
the same flags on a tiny run (seconds: tiny models, one step, one request, two examples), in process,
and comparing the header (and for `ina eval` the task/metric rows, whose names the README uses) with
the table it printed. Summaries the docs assemble from several runs carry no marker; a table that starts
like a printed `ina bench` / `ina bench serve` table must carry one.
"""

from __future__ import annotations

import itertools
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from ina.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"<!-- printed by: (ina .+?) -->")
# the first columns of the tables these commands print: a docs table starting so must be marked
PRINTED_STARTS = {"bench": ["variant", "trainable"], "bench serve": ["clients", "requests"]}


@dataclass
class ShownTable:
    """A docs table marked as a command's output: where, the command (words after `ina`), header, rows."""

    where: str
    argv: list[str]
    header: list[str]
    rows: list[list[str]]

    @property
    def command(self) -> str:
        return "bench serve" if self.argv[:2] == ["bench", "serve"] else self.argv[0]


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _tables(text: str) -> list[tuple[int, list[str], list[list[str]], str | None]]:
    """Every Markdown table: (line number, header, rows, the marked command above it or None)."""
    lines = text.splitlines()
    found, marked, index = [], None, 0
    while index < len(lines):
        line = lines[index].strip()
        if match := MARKER.search(line):
            marked = match.group(1)
        elif line.startswith("|") and index + 1 < len(lines) and lines[index + 1].strip().startswith("|---"):
            rows, end = [], index + 2
            while end < len(lines) and lines[end].strip().startswith("|"):
                rows.append(_cells(lines[end]))
                end += 1
            found.append((index + 1, _cells(line), rows, marked))
            marked, index = None, end
            continue
        elif line:
            marked = None  # a marker applies to the table right below it only
        index += 1
    return found


def shown_tables(paths: list[Path] = DOCS) -> list[ShownTable]:
    out = []
    for path in paths:
        for line, header, rows, marked in _tables(path.read_text(encoding="utf-8")):
            if marked:
                words = shlex.split(marked)[1:]
                out.append(ShownTable(f"{path.relative_to(ROOT)}:{line}", words, header, rows))
    return out


SHOWN = shown_tables()


def _printed_table(output: str) -> tuple[list[str], list[list[str]]]:
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    rows = [_cells(line) for line in lines[start + 2 :] if line.startswith("| ")]
    return _cells(lines[start]), rows


def _without(argv: list[str], flags: set[str]) -> list[str]:
    """``argv`` without each flag in ``flags`` and its value."""
    out, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word in flags:
            skip = True
        else:
            out.append(word)
    return out


def tiny_argv(table: ShownTable, tmp_path: Path) -> list[str]:
    """The documented command with the same flags, shrunk to seconds (the flags that shape the table kept)."""
    argv = _without(table.argv, {"--json", "--output_dir"})
    if table.command == "bench":  # CPU unless the docs say otherwise; one measured round of a tiny batch
        return ["bench", "--device", "cpu", *argv[1:], "--steps", "1", "--warmup", "0", "--batch", "1",
                "--seq", "8", "--decode_tokens", "2", "--decode_rounds", "1"]  # fmt: skip
    if table.command == "bench serve":
        return [
            *argv,
            "--concurrency",
            "1",
            "--requests_per_client",
            "1",
            "--max_tokens",
            "2",
            "--num_threads",
            "1",
        ]
    if table.command == "eval":  # the same adapter names, on a tiny model; two examples of each task
        from ina.testing import tiny_files

        base, demo = tiny_files(tmp_path / "models")
        names = [spec.split("=", 1)[0] for flag, spec in itertools.pairwise(argv) if flag == "--adapter"]
        argv = _without(argv, {"--adapter", "--base_model", "--limit"})
        adapters = [word for name in names for word in ("--adapter", f"{name}={demo['ina03']}")]
        return [*argv, "--base_model", base, *adapters, "--limit", "2", "--output_dir", str(tmp_path / "out")]
    raise AssertionError(f"{table.where}: no tiny run known for `ina {table.command}`; add one to tiny_argv")


def test_the_docs_mark_the_tables_of_each_command() -> None:
    """The marker search finds tables (a broken parser must not pass by finding none)."""
    assert {table.command for table in SHOWN} >= {"bench", "bench serve", "eval"}, [t.where for t in SHOWN]


def test_a_table_that_looks_printed_is_marked() -> None:
    unmarked = []
    for path in DOCS:
        for line, header, _, marked in _tables(path.read_text(encoding="utf-8")):
            starts = [command for command, start in PRINTED_STARTS.items() if header[: len(start)] == start]
            if starts and not marked:
                unmarked.append(f"{path.relative_to(ROOT)}:{line} (`ina {starts[0]}`)")
    assert not unmarked, f"tables shaped like a command's output without <!-- printed by: ... -->: {unmarked}"


@pytest.mark.parametrize("table", SHOWN, ids=[t.where for t in SHOWN])
def test_the_columns_shown_are_the_columns_printed(
    table: ShownTable, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(tiny_argv(table, tmp_path)) == 0
    header, rows = _printed_table(capsys.readouterr().out)
    if table.command == "eval":  # model columns are named by the docs; task, metric and n are not
        assert table.header[:3] == header[:3] and len(table.header) == len(header), table.where
        shown = {(row[0], row[1]) for row in table.rows}
        assert shown == {(row[0], row[1]) for row in rows}, f"{table.where}: task/metric rows differ"
    else:
        assert table.header == header, (
            f"{table.where}: the docs show\n{table.header}\nthe command prints\n{header}"
        )
    if table.command == "bench":  # the variants shown are variants it runs
        assert {row[0] for row in table.rows} <= {row[0] for row in rows}, table.where


def test_bench_help_states_the_shape_a_model_runs_at(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ina bench --help` says what --batch and --seq default to with --model, and a run uses exactly that."""
    from ina.testing import tiny_model

    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    batch = re.search(r"--batch BATCH batch size \(default: [^)]*--model (\d+)\)", help_text)
    seq = re.search(r"--seq SEQ sequence length \(default: [^)]*--model (\d+)\)", help_text)
    assert batch and seq, "the help of --batch / --seq does not say the --model default"
    folder = tmp_path / "model"
    tiny_model("llama").save_pretrained(folder)
    argv = ["bench", "--model", str(folder), "--warmup", "0", "--steps", "1", "--variants", "base"]
    assert main(argv) == 0
    assert f"batch {batch.group(1)} × seq {seq.group(1)}," in capsys.readouterr().err


CACHE_LITERAL = re.compile(r"(?<!INA_CACHE:-)(~|\$HOME)/\.cache/ina\b")


def hard_coded_cache(paths: list[Path]) -> list[str]:
    """Lines of shell blocks that name the cache as ``~/.cache/ina`` instead of through ``$INA_CACHE``."""
    found = []
    for path in paths:
        fenced = False
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip().startswith("```"):
                fenced = not fenced
            elif fenced and CACHE_LITERAL.search(line):
                found.append(f"{path.name}:{number}")
    return found


def test_commands_find_the_embedded_model_through_ina_cache() -> None:
    """A command that names the prepared model works wherever $INA_CACHE put it: ``${INA_CACHE:-$HOME/.cache/ina}``."""
    assert not hard_coded_cache(DOCS), "write ${INA_CACHE:-$HOME/.cache/ina}/models/... (see docs/serve.md)"
