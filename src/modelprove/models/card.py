"""The model card: the JSON half of a model file, everything needed to rebuild the network."""

from __future__ import annotations

import math
import re
import reprlib
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from modelprove.core.errors import ModelFileError
from modelprove.models.architectures import ARCHITECTURES, MIN_INPUT_SIZE
from modelprove.models.classifier import Classifier

CARD_FORMAT = "modelprove-model/1"
_REPR = reprlib.Repr()
_REPR.maxlist = _REPR.maxdict = 8
_REPR.maxstring = _REPR.maxother = 80
_SHA256 = re.compile(r"[0-9a-f]{64}")
_FIX = f"correct the field in the card, or re-save the model with modelprove (format {CARD_FORMAT})."
# Smallest normalisation std a card may give: pixels are in [0, 1], so dividing by less blows them up to
# values a float32 network turns into inf/NaN (a card with std 1e-30 made every output NaN).
MIN_STD = 1e-6


@dataclass
class ModelCard:
    """Architecture, classes, input shape [C, H, W], normalisation and provenance of a model."""

    arch: str
    num_classes: int
    classes: list[str]
    input_shape: list[int]
    mean: list[float]
    std: list[float]
    training: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str = ""
    format: str = CARD_FORMAT

    @property
    def in_channels(self) -> int:
        return self.input_shape[0]

    @property
    def input_size(self) -> tuple[int, int]:
        return self.input_shape[1], self.input_shape[2]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any, path: str | Path | None = None) -> ModelCard:
        """Validate every field of a parsed card; errors name ``path`` and the field."""
        if not isinstance(d, Mapping):
            raise ModelFileError(f"a model card must be a JSON object, got {type(d).__name__}.", path=path, fix=_FIX)
        names = [f.name for f in fields(cls)]
        if unknown := sorted(set(d) - set(names)):
            raise ModelFileError(
                f"unknown field(s) {_REPR.repr(unknown)}; a card has only {names}.",
                path=path,
                fix="put free-form records under 'training' or 'lineage'.",
            )
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        if missing := [name for name in required if name not in d]:
            raise ModelFileError(f"missing field(s) {missing}.", path=path, fix=_FIX)
        return cls(**{name: d[name] for name in names if name in d}).validated(path)

    def validated(self, path: str | Path | None = None) -> ModelCard:
        """Check every field's type and consistency; return a copy with normalised values."""

        def bad(name: str, expected: str, got: Any) -> ModelFileError:
            # The card may come from the adversary: keep what it holds short in the message.
            return ModelFileError(f"field {name!r} must be {expected}, got {_REPR.repr(got)}.", path=path, fix=_FIX)

        if self.format != CARD_FORMAT:
            raise ModelFileError(
                f"field 'format' must be {CARD_FORMAT!r}, got {_REPR.repr(self.format)}.",
                path=path,
                fix="this is not a modelprove model card, or it was written by an incompatible version.",
            )
        if not isinstance(self.arch, str) or self.arch not in ARCHITECTURES:
            raise bad("arch", f"one of {sorted(ARCHITECTURES)}", self.arch)
        if not _is_int(self.num_classes) or self.num_classes < 2:
            raise bad("num_classes", "an integer >= 2", self.num_classes)
        if (
            not isinstance(self.classes, list)
            or not all(isinstance(c, str) and c for c in self.classes)
            or len(set(self.classes)) != len(self.classes)
        ):
            raise bad("classes", "a list of distinct non-empty strings", self.classes)
        if len(self.classes) != self.num_classes:
            raise bad("classes", f"a list of num_classes={self.num_classes} names", self.classes)
        shape = self.input_shape
        if not (isinstance(shape, list) and len(shape) == 3 and all(_is_int(s) and s > 0 for s in shape)):
            raise bad("input_shape", "[channels, height, width] of positive integers", shape)
        if min(shape[1:]) < MIN_INPUT_SIZE:
            raise bad("input_shape", f"at least {MIN_INPUT_SIZE} pixels high and wide", shape)
        mean = _floats(self.mean, shape[0])
        if mean is None:
            raise bad("mean", f"a list of {shape[0]} finite numbers (one per channel)", self.mean)
        std = _floats(self.std, shape[0])
        if std is None or min(std) < MIN_STD:
            raise bad("std", f"a list of {shape[0]} finite positive numbers >= {MIN_STD:g} (one per channel)", self.std)
        for name in ("training", "lineage"):
            if not isinstance(getattr(self, name), dict):
                raise bad(name, "a JSON object", getattr(self, name))
        if not isinstance(self.weights_sha256, str) or not (
            self.weights_sha256 == "" or _SHA256.fullmatch(self.weights_sha256)
        ):
            raise bad("weights_sha256", "64 lowercase hex digits (or empty)", self.weights_sha256)
        return replace(
            self,
            classes=list(self.classes),
            input_shape=list(shape),
            mean=mean,
            std=std,
            training=dict(self.training),
            lineage=dict(self.lineage),
        )


def card_for(
    model: Classifier,
    classes: Sequence[str] | None = None,
    training: dict[str, Any] | None = None,
    lineage: dict[str, Any] | None = None,
) -> ModelCard:
    """The card describing ``model``; ``classes`` default to "0", "1", ... ."""
    return ModelCard(
        arch=model.arch,
        num_classes=model.num_classes,
        classes=list(classes) if classes is not None else [str(i) for i in range(model.num_classes)],
        input_shape=[model.in_channels, *model.input_size],
        mean=model.mean.flatten().tolist(),
        std=model.std.flatten().tolist(),
        training=dict(training or {}),
        lineage=dict(lineage or {}),
    ).validated()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _floats(values: Any, length: int) -> list[float] | None:
    if not isinstance(values, list) or len(values) != length:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        return None
    return [float(v) for v in values]
