"""Small typed configs (dataclasses) filled from ``key=value`` strings, with errors naming the field."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

from modelprove.core.errors import ModelproveError

C = TypeVar("C")


def _convert(cls: type, name: str, annotation: Any, text: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if text.lower() in ("none", "null", "") and len(options) < len(typing.get_args(annotation)):
            return None
        return _convert(cls, name, options[0], text)
    if origin is typing.Literal:
        allowed = [str(a) for a in typing.get_args(annotation)]
        if text not in allowed:
            raise ModelproveError(f"{cls.__name__}.{name} must be one of {', '.join(allowed)}; got {text!r}.")
        return text
    try:
        if annotation is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if annotation in (int, float, str):
            return annotation(text)
    except ValueError:
        raise ModelproveError(
            f"{cls.__name__}.{name} expects {annotation.__name__}, got {text!r}."
        ) from None
    return text


def pair_keys(pairs: list[str] | None) -> list[str]:
    """The field names that ``key=value`` strings set (as :func:`config_from_pairs` reads them)."""
    return [pair.partition("=")[0].strip().replace("-", "_") for pair in pairs or [] if "=" in pair]


def config_from_pairs(cls: type[C], pairs: list[str] | None = None, **overrides: Any) -> C:
    """Build ``cls`` from its defaults, then ``key=value`` strings, then keyword overrides."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise ModelproveError(f"--set takes key=value, got {pair!r}.")
        if key not in fields:
            raise ModelproveError(
                f"{cls.__name__} has no field {key!r}; known fields: {', '.join(sorted(fields))}."
            )
        values[key] = _convert(cls, key, hints[key], text.strip())
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**values)


def describe_fields(cls: type) -> list[tuple[str, str, Any]]:
    """(name, type, default) of every field, for `--help`-style listings; a Literal's type is its
    allowed values, e.g. ``sign|gradient``."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        out.append((f.name, _describe_type(hints[f.name]), default))
    return out


def _describe_type(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "|".join(str(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " | ".join("None" if a is type(None) else _describe_type(a) for a in typing.get_args(annotation))
    return getattr(annotation, "__name__", str(annotation))
