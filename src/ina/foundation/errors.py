"""The one error type a command line turns into a single line and exit code 2, and an argparse parser
that reports its own errors the same way."""

from __future__ import annotations

import argparse
from typing import Any, NoReturn


class UsageError(ValueError):
    """Bad input from a user: the message names the flag or parameter, the rule, the value and the fix.

    Every room's own input errors derive from it, so the command line reports them all the same way
    (one line, exit code 2) and the HTTP layer as a 4xx.
    """


def one_line(error: BaseException) -> str:
    """``error``'s message on one line: a heading and its ``- item`` lines joined with ``; ``."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    items = [line[2:].strip() if line.startswith("- ") else line for line in lines]
    if not items:
        return type(error).__name__
    head, rest = items[0], items[1:]
    if not rest:
        return head
    return f"{head if head.endswith(':') else head + ';'} {'; '.join(rest)}"


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line naming the command and its ``--help``, exit code 2 (no usage block).

    Subcommand parsers made from it (``add_subparsers``) are of the same class. ``help_command`` is the
    command whose ``--help`` the line points to (default: this parser's).
    """

    def __init__(self, *args: Any, help_command: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help_command = help_command

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.help_command or self.prog} --help`)\n")
