"""Command-line options from config dataclasses: one ``--option`` per field, help from its metadata.

Used by ``python -m synth`` and ``python -m tree`` so an option's flag, type, default and help always
match the dataclass field it fills.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Sequence, TypeVar

C = TypeVar("C")


def add_dataclass_options(parser: argparse.ArgumentParser | Any, cls: type, skip: Sequence[str] = ()) -> None:
    """Add ``--field-name`` for every int, float, str and bool field of ``cls`` not in ``skip``.

    Bools become ``--name/--no-name``; the default is the field's default.
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if f.name in skip or kind not in (int, float, str, bool):
            continue
        flag = f"--{f.name.replace('_', '-')}"
        help_text = f"{f.metadata.get('help', '')} (default: {f.default})"
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, dest=f.name, help=help_text)
        else:
            parser.add_argument(flag, type=kind, default=f.default, dest=f.name, metavar=f.name.upper(), help=help_text)


def dataclass_from_args(cls: type[C], args: argparse.Namespace, **fixed: Any) -> C:
    """An instance of ``cls`` from the parsed options of its fields (``fixed`` values win)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**{**values, **fixed})


__all__ = ["add_dataclass_options", "dataclass_from_args"]


def trl_parse(parser: Any, argv: Sequence[str] | None) -> tuple[Any, ...]:
    """``TrlParser.parse_args_and_config``, with a ``--config`` file that is not valid YAML turned into the
    one-line ValueError (``file:line: not valid YAML (...)``) the other bad options give."""
    import yaml

    from data.records import yaml_error

    try:
        return parser.parse_args_and_config(None if argv is None else list(argv))
    except yaml.YAMLError as e:
        args = list(argv or [])
        path = next((a.split("=", 1)[1] for a in args if a.startswith("--config=")), None)
        path = path or next((args[i + 1] for i, a in enumerate(args[:-1]) if a == "--config"), "--config")
        raise yaml_error(path, e) from None
