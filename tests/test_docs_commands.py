"""Every ```bash command of README.md and docs/*.md runs as written, or says in the docs why it is not run here.

Each `ina` command (also ``python -m ina``, ``torchrun ... -m ina``, ``accelerate launch ... -m ina``) is
parsed by the real parsers: the `ina` command table, then TrainingArguments for the flags a recipe
passes on; a renamed or misspelt flag fails its test. A command that needs a GPU, the hub, your own
files, a server, or minutes of compute carries a comment saying so, on its line or on the comment
lines just above its run of commands (``# needs a GPU``, ``# needs the hub``, ``# needs your files``, ``# takes
minutes``, ``# runs until stopped``); its test is skipped with that reason once its flags parse. The
others are run as written in an empty folder by `test_runs_as_written` (``scripts/test --slow``).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCES = ("```bash", "```sh", "```shell", "```console")
MARKER = re.compile(r"\b(needs? |takes minutes|until stopped)", re.IGNORECASE)
OPERATORS = {"&&", "||", ";", "|", "&"}
WRAPPERS = {"time", "nice", "nohup", "env"}
RUNNERS = ("torchrun", "accelerate", "python", "python3")
COMMAND_START = re.compile(
    r"(\w+=\S+ )*(ina|\.venv/bin/ina|python3? -m ina|torchrun|accelerate|curl|scripts/)\b"
)


@dataclass
class DocCommand:
    """One simple command of a docs block: where it is, its words, and why it is not run (if it says)."""

    file: str
    line: int
    words: list[str]
    reason: str = ""
    env: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def ina_argv(self) -> list[str] | None:
        """The arguments after `ina` (or ``-m ina``), or None when this is not an `ina` command."""
        words = self.words
        while words and words[0] in WRAPPERS:  # `time ina sweep ...`
            words = words[1:]
        if words and Path(words[0]).name == "ina":
            return words[1:]
        if words and Path(words[0]).name in RUNNERS:
            for index in range(len(words) - 1):
                if words[index] == "-m" and words[index + 1] == "ina":
                    return words[index + 2 :]
        return None


def _blocks(path: Path) -> list[tuple[int, list[str]]]:
    """The shell blocks of a Markdown file, (first line number, lines): fenced ```bash blocks, and
    indented (4-space) code blocks whose first line starts with a command (``ina``, ``curl`` ...)."""
    blocks: list[tuple[int, list[str]]] = []
    current: list[str] | None = None
    indented: list[str] | None = None
    start, fenced, previous = 0, False, ""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = line.strip()
        if indented is not None and (line.startswith("    ") or not stripped):
            indented.append(line[4:])
        elif indented is not None:
            blocks.append((start, indented))
            indented = None
        if current is None and stripped.startswith("```"):
            fenced = not fenced
            if fenced and stripped.startswith(FENCES):
                current, start = [], number + 1
        elif current is not None and stripped.startswith("```"):
            blocks.append((start, current))
            current, fenced = None, False
        elif current is not None:
            current.append(line)
        elif (
            not fenced
            and indented is None
            and not previous.strip()
            and line.startswith("    ")
            and COMMAND_START.match(line[4:])
        ):
            indented, start = [line[4:]], number
        previous = line
    if indented is not None:
        blocks.append((start, indented))
    return blocks


def _logical_lines(lines: list[str], first: int) -> list[tuple[int, str, str]]:
    """(line number, command text, comments on it and on the comment lines just above) per shell command."""
    result: list[tuple[int, str, str]] = []
    above: list[str] = []  # comment lines above a run of commands apply to each, up to a blank line
    pending, start, notes, after_command = "", 0, "", False
    for offset, line in enumerate(lines):
        number = first + offset
        if not pending and not line.strip():
            above, after_command = [], False
            continue
        if not pending and line.strip().startswith("#"):
            above = [line.strip()] if after_command else [*above, line.strip()]
            after_command = False
            continue
        if not pending:
            start, notes, after_command = number, " ".join(above), True
        pending += line + "\n"
        try:
            shlex.split(pending, comments=True)  # complete once its quotes close
        except ValueError:
            continue
        if pending.rstrip().endswith("\\"):
            continue
        comments = " ".join(re.findall(r"(?:^|\s)(#[^\n]*)", _unquoted(pending)))
        result.append((start, pending, f"{notes} {comments}".strip()))
        pending = ""
    assert not pending, f"an unfinished command (open quote or trailing backslash) at line {start}"
    return result


def _unquoted(text: str) -> str:
    """``text`` with quoted parts blanked, so that a '#' inside quotes is not taken for a comment."""
    return re.sub(r"'[^']*'|\"[^\"]*\"", lambda m: " " * len(m.group()), text)


def _expand(text: str, variables: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return variables.get(name, os.environ.get(name, match.group(0)))

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, text)


def extract(paths: list[Path] = DOCS) -> list[DocCommand]:
    """Every simple command of every shell block, with ``NAME=value`` lines applied to later ``$NAME``."""
    commands = []
    for path in paths:
        variables: dict[str, str] = {}  # a file's blocks are one session: `A=...` serves the blocks below
        for first, lines in _blocks(path):
            for number, text, notes in _logical_lines(lines, first):
                words = shlex.split(_expand(text, variables).replace("\\\n", " "), comments=True)
                reason = notes.lstrip("# ") if MARKER.search(notes) else ""
                for simple in _split(words):
                    env = {}
                    while simple and re.fullmatch(r"\w+=.*", simple[0]):
                        name, value = simple.pop(0).split("=", 1)
                        env[name] = value
                    if not simple:
                        variables.update(env)
                        continue
                    commands.append(DocCommand(str(path.relative_to(ROOT)), number, simple, reason, env))
    return commands


def _split(words: list[str]) -> list[list[str]]:
    parts: list[list[str]] = [[]]
    for word in words:
        if word in OPERATORS:
            parts.append([])
        else:
            parts[-1].append(word)
    return [part for part in parts if part]


COMMANDS = extract()
INA = [command for command in COMMANDS if command.ina_argv is not None]


def parse_problem(argv: list[str]) -> str | None:
    """Why the real parsers refuse ``argv`` (the words after `ina`), or None when every flag parses.

    ``...`` stands for elided arguments and is dropped. Recipes pass the flags they do not own to
    `transformers.TrainingArguments`; those must be its fields (after an optional config file).
    """
    import contextlib
    import io

    from ina.cli import build_parser

    # `--flag ...` is a flag with an elided value; a bare `...` elides arguments
    argv = [("VALUE" if before.startswith("--") and "=" not in before else None) if word == "..." else word
            for before, word in zip(["", *argv], argv, strict=False)]  # fmt: skip
    argv = [word for word in argv if word is not None]
    command = next((word for word in argv if not word.startswith("-")), None)
    parser = build_parser(command)
    error = io.StringIO()
    try:
        with contextlib.redirect_stderr(error):
            args, extra = parser.parse_known_args(argv)
    except SystemExit as exit:
        return error.getvalue().strip() or f"exit code {exit.code}"
    if args.command is None:
        return "no command"
    if not extra:
        return None
    if not getattr(args, "accepts_extra_args", False):
        return f"unrecognized arguments: {extra}"
    if extra and not extra[0].startswith("-") and extra[0].endswith((".yaml", ".yml", ".json")):
        extra = extra[1:]  # glue / squad: a config file first
    if args.command == "sweep":  # the sweep passes the rest to its experiment's parser
        import argparse

        from ina.experiments.arguments import add_options

        experiment = argparse.ArgumentParser(allow_abbrev=False)
        add_options(experiment, getattr(args, "experiment", "glue"))
        with contextlib.redirect_stderr(error):
            try:
                _, extra = experiment.parse_known_args(extra)
            except SystemExit:
                return error.getvalue().strip()
    from transformers import HfArgumentParser, TrainingArguments

    from ina.foundation.trainer_arguments import RENAMED_TRAINING_FLAGS

    renamed = [re.sub(r"^--(\w+)", lambda m: f"--{RENAMED_TRAINING_FLAGS.get(m[1], m[1])}", w) for w in extra]
    with contextlib.redirect_stderr(error):
        try:
            _, remaining = HfArgumentParser(TrainingArguments).parse_known_args(renamed)
        except SystemExit:
            return error.getvalue().strip()
    return (
        f"neither `ina {args.command}` flags nor TrainingArguments fields: {remaining}" if remaining else None
    )


def test_docs_have_commands() -> None:
    """The extraction sees the docs' commands (a broken extractor must not pass every test by finding none)."""
    assert len(INA) >= 20, [c.id for c in COMMANDS]
    assert {Path(c.file).name for c in INA} >= {"README.md", "finetune.md", "experiments.md", "serve.md"}
    assert all(c.ina_argv for c in INA)  # `ina` alone is not a docs command


def test_a_renamed_flag_fails() -> None:
    """The check can fail: a flag no parser knows, a bad value, a wrong command."""
    assert parse_problem(["bench", "--preset", "tiny", "--stepz", "3"])
    assert parse_problem(["glue", "--lora_r", "four"])
    assert parse_problem(["finetune", "--max_stepz", "3"])
    assert parse_problem(["sweep", "--experiment", "glue", "--seedz", "1"])
    assert parse_problem(["nosuchcommand"])
    assert parse_problem(["finetune", "--max_steps", "3", "--bf16", "--threshold_ratio_inhi", "0.3"]) is None


def test_shell_syntax_is_understood() -> None:
    lines = ['R=runs   # the folder', 'A="--adapter a=$R/x \\', '   --adapter b=$R/y"', "ina viz inhibition $A \\",
             "  --out viz  # needs the runs above", "curl -d '{", '  "a": 1}\' http://h  # needs a server']  # fmt: skip
    path = ROOT / "tests" / ".docs-commands-probe.md"
    path.write_text("```bash\n" + "\n".join(lines) + "\n```\n")
    try:
        (viz, curl) = extract([path])
    finally:
        path.unlink()
    assert viz.ina_argv == [
        "viz",
        "inhibition",
        "--adapter",
        "a=runs/x",
        "--adapter",
        "b=runs/y",
        "--out",
        "viz",
    ]
    assert viz.reason == "needs the runs above" and viz.line == 5
    assert curl.words[:2] == ["curl", "-d"] and curl.reason == "needs a server"


@pytest.mark.parametrize("command", INA, ids=[c.id for c in INA])
def test_flags_parse(command: DocCommand) -> None:
    """The command's flags parse; a command the docs mark as not runnable here is then skipped, with why."""
    problem = parse_problem(command.ina_argv or [])
    assert problem is None, f"{command.id}: `{shlex.join(command.words)}`: {problem}"
    if command.reason:
        pytest.skip(f"parsed; not run here: {command.reason}")


OTHERS = [c for c in COMMANDS if c.ina_argv is None]


@pytest.mark.parametrize("command", OTHERS, ids=[c.id for c in OTHERS])
def test_other_commands(command: DocCommand) -> None:
    """A script the docs call exists; other tools (curl, torchrun's own options) are listed as skipped."""
    program = command.words[0]
    if "/" in program and not program.startswith(("/", "~")):
        assert (ROOT / program).exists(), f"{command.id}: {program} does not exist"
    pytest.skip(f"not an `ina` command ({program}){': ' + command.reason if command.reason else ''}")


RUNNABLE = [c for c in INA if not c.reason]


@pytest.mark.slow
@pytest.mark.parametrize("command", RUNNABLE, ids=[c.id for c in RUNNABLE])
def test_runs_as_written(command: DocCommand, tmp_path: Path) -> None:
    """An unmarked command runs offline as written, from an empty folder, and exits 0."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **command.env}
    script = Path(sys.executable).with_name("ina")
    assert script.exists(), f"no `ina` script beside {sys.executable}"
    result = subprocess.run(
        [str(script), *(command.ina_argv or [])], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, f"{command.id}: {result.stderr[-2000:]}"
