"""Command-line flags from a config dataclass; the remaining arguments are Beam options."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml


def _base_type(annotation: Any) -> type:
    """``float | None`` -> float; ``bool`` -> bool; ..."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return args[0]
    return annotation


def add_config_flags(parser: argparse.ArgumentParser, config_class: type) -> None:
    """One ``--name`` flag per field of ``config_class`` (booleans are ``--name`` switches)."""
    group = parser.add_argument_group(f"{config_class.__name__} options")
    hints = typing.get_type_hints(config_class)
    for field in dataclasses.fields(config_class):
        kind = _base_type(hints[field.name])
        flag = f"--{field.name}"
        if kind is bool:
            group.add_argument(flag, action="store_true", default=None)
        else:
            group.add_argument(flag, type=kind, default=None, help=f"default {field.default}")
    parser.add_argument("--config", help="YAML file of these options (flags override it)")


def parse_config(
    parser: argparse.ArgumentParser, config_class: type, argv: Sequence[str] | None
) -> tuple[argparse.Namespace, Any, list[str]]:
    """``(args, config, beam_args)``: flags > ``--config`` YAML > dataclass defaults."""
    args, beam_args = parser.parse_known_args(argv)
    values: dict[str, Any] = {}
    if args.config:
        values.update(yaml.safe_load(Path(args.config).read_text()) or {})
    names = {f.name for f in dataclasses.fields(config_class)}
    unknown = set(values) - names
    if unknown:
        parser.error(f"{args.config} has unknown options {sorted(unknown)}; known: {sorted(names)}")
    values.update({n: getattr(args, n) for n in names if getattr(args, n) is not None})
    return args, config_class(**values), beam_args
