"""Typed command-line arguments: dataclass fields as flags, config files (the Trainer's own: `trainer_arguments`).

A command declares its options once, as a dataclass whose fields carry ``help`` and ``aliases``
metadata (the form `transformers.HfArgumentParser` reads). The flags are built from those fields
without importing transformers, so ``--help`` answers at once; values are merged (defaults, a
YAML/JSON ``--config`` file, the command line) and the dataclass is built through HfArgumentParser.
Every ``--flag`` the command does not own goes to `transformers.TrainingArguments`::

    @dataclass
    class GlueArguments(AdapterArguments):
        task_name: str = option("sst2", "GLUE task", aliases=("--task",))
        lora_r: int = redefault(AdapterArguments, "lora_r", 4)

    add_arguments(subparser, GlueArguments)                     # in the CLI's register()
    ...                                                         # in the handler, given (namespace, extra):
    config, config_rest = split_values(read_config(path), GlueArguments)
    arguments = from_values(GlueArguments, {**config, **given(namespace, GlueArguments)})
    training = training_arguments([*to_argv(config_rest), *extra], "outputs/glue", {"num_train_epochs": 10},
                                  command="ina glue")

This module imports no framework at import time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import types
import typing
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ina.foundation.errors import UsageError

_TRUE = {"true", "1", "yes", "y", "on", "t"}
_FALSE = {"false", "0", "no", "n", "off", "f"}


def option(default: Any, help: str, aliases: Sequence[str] = ()) -> Any:
    """A dataclass field with its flag's help text and extra spellings (``aliases``, e.g. ``("--data_dir",)``)."""
    return dataclasses.field(default=default, metadata={"help": help, "aliases": tuple(aliases)})


def redefault(
    owner: type, name: str, default: Any, aliases: Sequence[str] = (), help: str | None = None
) -> Any:
    """Field ``name`` of dataclass ``owner`` with another default (and optionally aliases or help), for a subclass."""
    original = {f.name: f for f in dataclasses.fields(owner)}[name]
    metadata = dict(original.metadata)
    metadata["aliases"] = (*metadata.get("aliases", ()), *aliases)
    if help is not None:
        metadata["help"] = help
    return dataclasses.field(default=default, metadata=metadata)


def boolean(text: str) -> bool:
    """``true``/``false`` (also yes/no, on/off, 1/0) as a bool, for flags that take an optional value."""
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false; got {text!r}")


def _value_type(hint: Any) -> Any:
    """``int | None`` → ``int``; other hints unchanged."""
    members = [m for m in typing.get_args(hint) if m is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return members[0]
    return hint


def flag_fields(cls: type) -> list[dataclasses.Field[Any]]:
    """The fields of dataclass ``cls`` that are command-line flags (``metadata["flag"] = False`` is not)."""
    return [f for f in dataclasses.fields(cls) if f.init and f.metadata.get("flag", True) is not False]


def flag_of(cls: type, name: str) -> str:
    """The primary flag of field ``name`` of ``cls`` (what error messages name)."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    return str(field.metadata.get("flag") or f"--{name}")


def _field_default(field: dataclasses.Field[Any]) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None if field.default is dataclasses.MISSING else field.default


def add_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    exclude: Iterable[str] = (),
    first: Sequence[str] = (),
    *,
    given_only: bool = True,
    kebab_aliases: bool = False,
    required_groups: Collection[str] = (),
) -> None:
    """Add a flag for every flag field of dataclass ``cls`` (except ``exclude``), the fields in ``first`` first.

    A field becomes ``--<name>`` (or ``metadata["flag"]``); its type and ``metadata["help"]`` become
    the flag's (a ``Literal`` type gives its values as choices). Other metadata: ``aliases`` (more
    spellings), ``choices``, ``metavar``, ``parse`` (text
    to value), ``append`` (a repeatable flag for a list), ``exclusive`` (a mutually exclusive group's
    name; those in ``required_groups`` need one flag). ``kebab_aliases`` also accepts ``--a-b``.

    ``given_only`` (recipes, which merge config files): defaults stay off the namespace
    (`argparse.SUPPRESS`, so `given` returns only what was typed), the help says ``(default: ...)``
    and a bool flag takes an optional ``true``/``false``. Otherwise the field's default is the flag's
    and a bool flag is a switch.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in flag_fields(cls) if f.name not in set(exclude)}
    order = [name for name in first if name in fields] + [name for name in fields if name not in first]
    groups: dict[str, Any] = {}
    for name in order:
        field, meta = fields[name], fields[name].metadata
        primary = flag_of(cls, name)
        names = [primary, *meta.get("aliases", ())]
        if kebab_aliases and "_" in primary:
            names.append(primary.replace("_", "-"))
        help_text = meta.get("help", "")
        options: dict[str, Any] = {"dest": name}
        options.update({key: meta[key] for key in ("choices", "metavar") if key in meta})
        kind = _value_type(hints.get(name, str))
        if typing.get_origin(kind) is typing.Literal:
            options.setdefault("choices", typing.get_args(kind))
            kind = str
        if given_only:
            if "default:" not in help_text:
                help_text = f"{help_text} (default: {field.default!r})"
            options["default"] = argparse.SUPPRESS
        else:
            options["default"] = _field_default(field)
        if kind is bool:
            options.update(type=boolean, nargs="?", const=True) if given_only else options.update(
                action="store_true"
            )
        elif "parse" in meta:
            options["type"] = meta["parse"]
        elif typing.get_origin(kind) is list:
            (options["type"],) = typing.get_args(kind) or (str,)
            options.update(action="append") if meta.get("append") else options.update(nargs="+")
        elif meta.get("append"):
            options.update(action="append", default=[] if not given_only else argparse.SUPPRESS)
        else:
            options["type"] = kind if kind in (int, float) else str
        target: Any = parser
        if "exclusive" in meta:
            if meta["exclusive"] not in groups:
                groups[meta["exclusive"]] = parser.add_mutually_exclusive_group(
                    required=meta["exclusive"] in required_groups
                )
            target = groups[meta["exclusive"]]
        target.add_argument(*names, help=help_text, **options)


def from_namespace(cls: type, namespace: argparse.Namespace) -> Any:
    """An instance of ``cls`` from the flags `add_arguments` added with ``given_only=False``."""
    return cls(**{f.name: getattr(namespace, f.name) for f in flag_fields(cls)})


def given(namespace: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The values of ``cls``' fields that were typed on the command line (see `add_arguments`)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {key: value for key, value in vars(namespace).items() if key in names}


def read_config(path: str | os.PathLike[str], flag: str = "--config") -> dict[str, Any]:
    """The ``option: value`` mapping of a YAML or JSON config file; errors name ``flag``."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(
            f"{flag} {str(path)!r}: no such file; give a YAML or JSON file of option: value lines"
        )
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UsageError(
            f"{flag} {str(path)!r}: not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
            f"{error.start}); give a YAML or JSON file of option: value lines"
        ) from None
    try:
        if file.suffix == ".json":
            loaded = json.loads(text) if text.strip() else {}
        else:
            import yaml

            loaded = yaml.safe_load(text) or {}
    except ValueError as error:  # json.JSONDecodeError
        raise UsageError(f"{flag} {str(path)!r}: invalid JSON ({error}); fix the file") from None
    except Exception as error:  # yaml.YAMLError; its text spans several lines
        raise UsageError(
            f"{flag} {str(path)!r}: invalid YAML ({_yaml_problem(error)}); fix the file"
        ) from None
    if not isinstance(loaded, dict):
        raise UsageError(
            f"{flag} {str(path)!r} must hold a mapping of option: value; got {type(loaded).__name__}"
        )
    return loaded


def _yaml_problem(error: Exception) -> str:
    """``problem at line L, column C`` of a YAML error (its own text spans several lines)."""
    problem = getattr(error, "problem", None) or " ".join(str(error).split())
    mark = getattr(error, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def split_values(values: Mapping[str, Any], cls: type) -> tuple[dict[str, Any], dict[str, Any]]:
    """``values`` (e.g. a config file's) split into ``cls``' fields (aliases resolved) and everything else.

    A list given for a text field becomes a comma list (``[q_proj, v_proj]`` -> ``"q_proj,v_proj"``).
    """
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    kinds = {f.name: _value_type(hints.get(f.name, str)) for f in fields}
    aliases = {alias.lstrip("-"): f.name for f in fields for alias in f.metadata.get("aliases", ())}
    own: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for key, value in values.items():
        name = aliases.get(key, key)
        if name in kinds:
            if kinds[name] is str and isinstance(value, (list, tuple)):
                value = ",".join(map(str, value))
            own[name] = value
        else:
            rest[key] = value
    return own, rest


def _coerce(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with each number or bool field checked (text such as ``"1e-4"`` converted), naming its flag."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    checked = dict(values)
    for name, value in values.items():
        if name not in fields or value is None:
            continue
        kind = _value_type(hints.get(name, str))
        if kind not in (int, float, bool) or (type(value) is kind) or (kind is float and type(value) is int):
            continue
        expected = {int: "an integer", float: "a number", bool: "true or false"}[kind]
        try:
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise ValueError
            if kind is bool:
                checked[name] = boolean(str(value))
            elif kind is int and isinstance(value, float) and value.is_integer():
                checked[name] = int(value)
            else:
                checked[name] = kind(value)
        except (ValueError, argparse.ArgumentTypeError):
            raise UsageError(f"{flag_of(cls, name)} must be {expected}; got {value!r}") from None
    return checked


def from_values(cls: type, values: Mapping[str, Any]) -> Any:
    """An instance of dataclass ``cls`` from ``values`` (field names), built by `transformers.HfArgumentParser`.

    Values of number and bool fields are checked first (a config file may hold ``lora_r: zero``).
    """
    from transformers import HfArgumentParser

    try:
        (arguments,) = HfArgumentParser(cls).parse_dict(_coerce(cls, values))
    except ValueError as error:
        if isinstance(error, UsageError):
            raise
        raise UsageError(str(error)) from error
    return arguments


def to_argv(values: Mapping[str, Any]) -> list[str]:
    """``{"max_steps": 5, "label_names": ["a", "b"]}`` -> ``["--max_steps", "5", "--label_names", "a", "b"]``."""
    argv: list[str] = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            argv += [f"--{key}", *map(str, value)]
        elif isinstance(value, dict):
            argv += [f"--{key}", json.dumps(value)]
        else:
            argv += [f"--{key}", str(value)]
    return argv


def flag_given(argv: Sequence[str], name: str) -> bool:
    """Whether ``--name`` appears in ``argv`` (as ``--name v`` or ``--name=v``)."""
    return any(token == f"--{name}" or token.startswith(f"--{name}=") for token in argv)


def flag_value(argv: Sequence[str], name: str) -> str | None:
    """The last value given to ``--name`` in ``argv`` (``--name v`` or ``--name=v``), or None."""
    value = None
    for index, token in enumerate(argv):
        if token == f"--{name}" and index + 1 < len(argv):
            value = argv[index + 1]
        elif token.startswith(f"--{name}="):
            value = token.split("=", 1)[1]
    return value
