"""Atomic file writes: a reader sees the old file or the new one, never half of either.

Every write goes to a temporary file in the destination folder, then ``os.replace`` moves it into
place; the temporary file is removed when anything fails. New files get the permissions a plain
``open`` would give them (``0o666`` less the process umask, read when the file is written).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

PathLike = str | os.PathLike[str]


def current_umask() -> int:
    """The process umask (the permissions plain `open` and `mkdir` would leave out)."""
    # Linux reports the umask without changing it; elsewhere it can only be read by setting it.
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, creating its folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.chmod(temporary, 0o666 & ~current_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def to_json(data: Any, indent: int | None = 2) -> str:
    """``data`` as JSON text with a final newline (non-ASCII kept; unknown types as ``str``)."""
    return json.dumps(data, indent=indent, ensure_ascii=False, default=str) + "\n"


def write_json(path: PathLike, data: Any, indent: int | None = 2) -> Path:
    """Write ``data`` as JSON to ``path`` atomically."""
    return write_text(path, to_json(data, indent))


def write_jsonl(path: PathLike, rows: Iterable[Any]) -> Path:
    """Write ``rows`` as JSON Lines to ``path`` atomically."""
    return write_text(path, "".join(to_json(row, indent=None) for row in rows))


def read_json(path: PathLike) -> Any:
    """The JSON value in ``path``."""
    with open(path, encoding="utf-8") as file:
        return json.load(file)


def read_text(path: PathLike, flag: str, what: str = "a text file", encoding: str = "utf-8") -> str:
    """The text of the file ``path`` given by ``flag``; a missing path, a folder, or bytes that are not
    UTF-8 raise a `UsageError` naming ``flag`` and ``what`` the file should be."""
    from ina.foundation.errors import UsageError

    file = Path(path)
    if not file.exists():
        raise UsageError(f"{flag} {str(path)!r}: no such file; give {what}")
    if file.is_dir():
        raise UsageError(f"{flag} {str(path)!r} is a folder; give {what}")
    try:
        return file.read_text(encoding=encoding)
    except UnicodeDecodeError as error:
        raise UsageError(
            f"{flag} {str(path)!r}: not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
            f"{error.start}); give {what}"
        ) from None


def output_problem(path: PathLike | None, flag: str, folder: bool = False) -> str | None:
    """Why ``path`` (given by ``flag``) cannot be written, checked before any work: a file given where a
    ``folder`` is written (or a folder where a file is), or a path under a file. None when it can."""
    if path is None:
        return None
    target = Path(path)
    if folder and target.is_file():
        return f"{flag} {str(path)!r} is a file; give a folder to write into"
    if not folder and target.is_dir():
        return f"{flag} {str(path)!r} is a folder; give a file name"
    blocker = next((parent for parent in target.parents if parent.exists()), None)
    if blocker is not None and not blocker.is_dir():
        return f"{flag} {str(path)!r}: {str(blocker)!r} is a file, not a folder; give a path in a folder"
    return None


def overlap_problem(path: PathLike, flag: str, sources: dict[str, PathLike | None]) -> str | None:
    """Why writing (or replacing) the folder ``path`` given by ``flag`` would touch an input: it is one of
    ``sources`` (flag -> path, e.g. ``{"SRC": src}``), holds one, or lies inside one. Paths are compared
    after resolving symbolic links. None when it touches none."""
    target = Path(path).resolve()
    for source_flag, source in sources.items():
        if not source:
            continue
        origin = Path(source).resolve()
        if target == origin:
            relation = "is"
        elif target in origin.parents:
            relation = "holds"
        elif origin in target.parents:
            relation = "lies inside"
        else:
            continue
        return (
            f"{flag} {str(path)!r} {relation} {source_flag} {str(source)!r}; writing there could destroy "
            f"{source_flag}. Choose a {flag} outside {source_flag}"
        )
    return None
