"""Typed dataclasses from nested mappings: how a YAML recipe and its overrides become a run's config.

Every value is checked against its field's type (ints are accepted where floats are expected, and so is a string
YAML 1.1 reads for a number like ``2e-4``); an unknown key is an error that lists the valid ones, so a typo never
silently falls back to a default; a section given in part keeps the rest of its default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any


def fields_of(cls: type) -> dict[str, dataclasses.Field]:
    """A dataclass's fields by name, in their order."""
    return {f.name: f for f in dataclasses.fields(cls)}


def coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a field's type, converting ints to floats and parsing nested sections."""
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a mapping of {annotation.__name__} keys, got {value!r}")
        return build(annotation, value, prefix=f"{key}.")
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(key, value, option)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(errors[0] if len(errors) == 1 else f"{key}: {value!r} does not fit {annotation}")
    if origin is list:
        (item,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise ValueError(f"{key}: expected a list, got {value!r}")
        return [coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is float:
        if isinstance(value, str):
            # YAML 1.1 reads 2e-4 (no dot) as a string; it is a number to anyone writing it
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{key}: expected true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ValueError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def build(cls: type, values: dict[str, Any], prefix: str = "", base: Any = None) -> Any:
    """``cls`` with ``values`` set on ``base`` (default ``cls()``); a nested section given in part keeps the rest of
    its parent's default (``evaluate.judge`` keeps its own default judge when only its options are given)."""
    known = fields_of(cls)
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(
            f"{prefix}{unknown[0]}: unknown config key; valid keys{' in ' + prefix[:-1] if prefix else ''}: "
            f"{', '.join(known)}"
        )
    instance = cls() if base is None else base
    for name, value in values.items():
        current = getattr(instance, name)
        if dataclasses.is_dataclass(hints[name]) and isinstance(value, dict) and current is not None:
            setattr(instance, name, build(hints[name], value, prefix=f"{prefix}{name}.", base=current))
        else:
            setattr(instance, name, coerce(f"{prefix}{name}", value, hints[name]))
    return instance


class Replace:
    """An override's mapping value: it takes the key's place instead of merging into it."""

    def __init__(self, value: dict[str, Any]) -> None:
        self.value = value


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` merged in key by key; a :class:`Replace` value takes its key's place whole."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Replace):
            out[key] = value.value
        elif isinstance(value, dict):
            out[key] = merge(out[key] if isinstance(out.get(key), dict) else {}, value)
        else:
            out[key] = value
    return out
