"""Command-line flags generated from a settings dataclass, so each option is written once.

A field becomes ``--<name>`` (or ``metadata["flag"]``); its type, default and ``metadata["help"]``
become the flag's. Other metadata keys: ``aliases`` (more spellings), ``choices``, ``metavar``,
``parse`` (turns the flag's text into the field's value), ``append`` (a repeatable flag for a list),
``exclusive`` (the name of a mutually exclusive group). Imports no framework.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Collection
from typing import Any


def flag_of(settings_class: type, name: str) -> str:
    """The primary flag of field ``name`` (what error messages name)."""
    field = next(f for f in dataclasses.fields(settings_class) if f.name == name)
    return str(field.metadata.get("flag", f"--{name}"))


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None if field.default is dataclasses.MISSING else field.default


def _value_type(hint: Any) -> Any:
    """``int | None`` → ``int``; other hints unchanged."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (inner,) = (arg for arg in typing.get_args(hint) if arg is not type(None))
        return inner
    return hint


def add_flags(
    parser: argparse.ArgumentParser,
    settings_class: type,
    kebab_aliases: bool = False,
    required_groups: Collection[str] = (),
) -> None:
    """Add one flag per field of ``settings_class`` to ``parser``, in field order.

    ``kebab_aliases`` also accepts ``--a-b`` for every ``--a_b``; a group named in ``required_groups``
    needs exactly one of its flags.
    """
    hints = typing.get_type_hints(settings_class)
    groups: dict[str, Any] = {}
    for field in dataclasses.fields(settings_class):
        if not field.init:
            continue
        meta = field.metadata
        primary = flag_of(settings_class, field.name)
        names = [primary, *meta.get("aliases", ())]
        if kebab_aliases and "_" in primary:
            names.append(primary.replace("_", "-"))
        options: dict[str, Any] = {"dest": field.name, "default": _default(field), "help": meta.get("help")}
        for key in ("choices", "metavar"):
            if key in meta:
                options[key] = meta[key]
        value_type = _value_type(hints[field.name])
        if value_type is bool:
            options["action"] = "store_true"
        elif "parse" in meta:
            options["type"] = meta["parse"]
        elif typing.get_origin(value_type) is list:
            (options["type"],) = typing.get_args(value_type)
            if meta.get("append"):
                options["action"] = "append"
            else:
                options["nargs"] = "+"
        else:
            options["type"] = value_type
        target: Any = parser
        if "exclusive" in meta:
            group = meta["exclusive"]
            if group not in groups:
                groups[group] = parser.add_mutually_exclusive_group(required=group in required_groups)
            target = groups[group]
        target.add_argument(*names, **options)


def settings_from(settings_class: type, arguments: argparse.Namespace) -> Any:
    """An instance of ``settings_class`` from the parsed flags of `add_flags`."""
    return settings_class(
        **{f.name: getattr(arguments, f.name) for f in dataclasses.fields(settings_class) if f.init}
    )
