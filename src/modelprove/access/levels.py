"""The three access levels, as classes that expose nothing beyond their level.

``LabelOnlyAccess`` ⊂ ``BlackBoxAccess`` ⊂ ``WhiteBoxAccess`` in what they offer, so a method that
needs at least black-box access accepts a white-box suspect too (and counts its queries alike).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from modelprove.core.errors import SuspectError
from modelprove.models import Classifier, ModelCard, predict_proba

WHITE_BOX = "white-box"
BLACK_BOX = "black-box"
LABEL_ONLY = "label-only"
ACCESS_LEVELS = (LABEL_ONLY, BLACK_BOX, WHITE_BOX)  # from least to most
_RANK = {level: rank for rank, level in enumerate(ACCESS_LEVELS)}
_OFFERS = {
    LABEL_ONLY: "top-1 labels",
    BLACK_BOX: "probability vectors",
    WHITE_BOX: "the model's weights and gradients",
}
PROBABILITY_TOLERANCE = 1e-3  # |row sum − 1| allowed; float32 softmax outputs sum to 1 within ~1e-6

Predictor = Callable[[Tensor], Any]  # images (N, C, H, W) in [0, 1] -> array-like outputs
Outputs = Literal["probabilities", "logits", "labels"]


class QueryBudgetError(SuspectError):
    """A black-box or label-only access was asked for more images than its budget allows."""


def check_level(level: str, field: str = "access") -> str:
    if level not in _RANK:
        raise SuspectError(f"{field} must be one of {', '.join(ACCESS_LEVELS)}; got {level!r}.")
    return level


class LabelOnlyAccess:
    """A suspect that answers top-1 labels only.

    ``predict`` maps an image batch to labels (``outputs='labels'``), or to probabilities/logits
    of which only the argmax ever leaves this object (``outputs=None``: logits the caller did not
    declare, see :class:`BlackBoxAccess`).
    """

    level = LABEL_ONLY
    probability_tolerance = PROBABILITY_TOLERANCE  # |row sum - 1| accepted (a rounding API allows more)
    # sha256 of every file the suspect was loaded from, for the verdict (set by access.open_suspect).
    file_hashes: dict[str, str] = {}

    def __init__(
        self,
        predict: Predictor,
        *,
        num_classes: int,
        input_shape: Sequence[int] | None = None,
        outputs: Outputs | None = "labels",
        name: str = "suspect",
        source: str | None = None,
        budget: int | None = None,
        batch_size: int = 512,
        arch: str | None = None,
    ):
        if outputs not in ("probabilities", "logits", "labels", None):
            raise SuspectError(f"outputs must be 'probabilities', 'logits' or 'labels'; got {outputs!r}.")
        if budget is not None and budget < 0:
            raise SuspectError(f"the query budget must be >= 0 images; got {budget}.")
        if num_classes < 2:
            raise SuspectError(f"a classifier needs at least 2 classes; {name} was given num_classes={num_classes}.")
        self._predict = predict
        self._outputs = outputs
        self._undeclared_checked = False
        self.num_classes = int(num_classes)
        self.input_shape = tuple(int(v) for v in input_shape) if input_shape is not None else None
        self.name = name
        self.source = source or name
        # The suspect's architecture when it is known from its weights (a model file), else None (an ONNX
        # file, an API): a verdict compares it with honest models of the same architecture.
        self.arch = arch
        self.budget = budget
        self.batch_size = batch_size
        self._queries = 0

    @property
    def queries(self) -> int:
        """Images sent so far."""
        return self._queries

    def labels(self, images: Tensor) -> Tensor:
        """Top-1 labels (N,) int64 of ``images``; counts N queries."""
        raw = self._query(images)
        if self._outputs == "labels":
            return self._checked_labels(raw, len(images))
        return self._checked_scores(raw, len(images)).argmax(dim=1)

    def check_input(self, input_shape: Sequence[int], num_classes: int | None = None, *, what: str = "the protection") -> None:
        """Fail before any query if the suspect cannot take ``what``'s images or classes."""
        expected = tuple(int(v) for v in input_shape)
        if self.input_shape is not None and self.input_shape != expected:
            raise SuspectError(
                f"{self.name} takes images of shape {_shape(self.input_shape)} (channels x height x width), "
                f"but {what} uses {_shape(expected)}.",
                path=self.source,
                fix="verify against a protection of the same task, or export the suspect for that input size.",
            )
        if num_classes is not None and self.num_classes != num_classes:
            raise SuspectError(
                f"{self.name} predicts {self.num_classes} classes, but {what} has {num_classes}.",
                path=self.source,
                fix="verify against a protection of the same task.",
            )

    def describe(self) -> dict:
        return {"level": self.level, "name": self.name, "source": str(self.source), "queries": self._queries,
                "budget": self.budget}

    # -- internals -------------------------------------------------------------------------

    def _query(self, images: Tensor) -> Any:
        self._count(images)
        images = images.detach().float()
        parts = [self._call(batch) for batch in images.split(self.batch_size)]
        if len(parts) == 1:
            return parts[0]
        return torch.cat([_as_tensor(part, self) for part in parts])

    def _count(self, images: Tensor) -> None:
        """Check a batch's shape against the suspect and the budget, then count its images."""
        if not isinstance(images, Tensor) or images.dim() != 4:
            raise SuspectError(f"queries to {self.name} must be a tensor (N, C, H, W); got {_what(images)}.")
        if self.input_shape is not None and tuple(images.shape[1:]) != self.input_shape:
            raise SuspectError(
                f"{self.name} takes images of shape {_shape(self.input_shape)} but was sent "
                f"{_shape(tuple(images.shape[1:]))}.",
                path=self.source,
                fix="resize the images, or use a suspect made for this input size.",
            )
        count = len(images)
        if self.budget is not None and self._queries + count > self.budget:
            raise QueryBudgetError(
                f"the query budget of {self.budget} images for {self.name} would be exceeded: "
                f"{self._queries} used, this batch needs {count} more.",
                path=self.source,
                fix="raise the budget, or lower the number of samples the method or attack uses.",
            )
        self._queries += count

    def _call(self, batch: Tensor) -> Any:
        try:
            return self._predict(batch)
        except SuspectError:
            raise
        except Exception as exc:  # the suspect is outside code; say whose call failed and why
            raise SuspectError(
                f"{self.name} failed on a batch of shape {tuple(batch.shape)}: {type(exc).__name__}: {exc}",
                path=self.source,
            ) from exc

    def _checked_scores(self, raw: Any, count: int) -> Tensor:
        scores = _as_tensor(raw, self).float()
        if scores.shape != (count, self.num_classes):
            raise SuspectError(
                f"{self.name} returned outputs of shape {tuple(scores.shape)} for {count} images; "
                f"expected ({count}, {self.num_classes}).",
                path=self.source,
            )
        bad = (~torch.isfinite(scores)).any(dim=1)
        if bad.any():
            raise SuspectError(
                f"{self.name} returned NaN or infinite values for {int(bad.sum())} of {count} images.",
                path=self.source,
                fix="check the suspect's preprocessing; a model with NaN outputs cannot be verified.",
            )
        if self._outputs is None and not self._undeclared_checked:
            self._undeclared_checked = True  # on the first batch the suspect answers
            if count and _are_distributions(scores):
                raise SuspectError(
                    f"{self.name}'s outputs already are probability vectors (every row in [0, 1], summing to 1), "
                    "but were not declared: taken as logits they would be softmaxed a second time.",
                    path=self.source,
                    fix="say what the suspect returns: outputs='probabilities', or outputs='logits' if they "
                        "truly are logits.",
                    cli_fix="pass --outputs probabilities (or --outputs logits if they truly are logits).",
                )
        if self._outputs in ("logits", None):
            return scores.softmax(dim=1)
        sums = scores.sum(dim=1)
        worst = int((sums - 1).abs().argmax())
        tolerance = self.probability_tolerance
        if (scores < -tolerance).any() or abs(float(sums[worst]) - 1) > tolerance:
            raise SuspectError(
                f"{self.name} returned rows that are not probability vectors (e.g. row {worst} sums to "
                f"{float(sums[worst]):.4g}, min value {float(scores.min()):.4g}).",
                path=self.source,
                fix="if the suspect returns logits, say so (outputs='logits').",
                cli_fix="if the suspect returns logits, pass --outputs logits.",
            )
        return scores

    def _checked_labels(self, raw: Any, count: int) -> Tensor:
        labels = _as_tensor(raw, self)
        if labels.shape != (count,):
            raise SuspectError(
                f"{self.name} returned labels of shape {tuple(labels.shape)} for {count} images; expected ({count},).",
                path=self.source,
            )
        if labels.is_floating_point():
            if not torch.isfinite(labels).all() or not torch.equal(labels, labels.round()):
                raise SuspectError(f"{self.name} returned non-integer labels.", path=self.source)
        labels = labels.long()
        if count and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise SuspectError(
                f"{self.name} returned labels outside 0..{self.num_classes - 1} "
                f"(min {int(labels.min())}, max {int(labels.max())}).",
                path=self.source,
            )
        return labels


class BlackBoxAccess(LabelOnlyAccess):
    """A suspect that answers probability vectors (MOVE Sec. 5.3's black-box setting).

    ``outputs='logits'`` softmaxes what ``predict`` returns; ``'probabilities'``: rows must already sum
    to 1; ``None`` (not declared): logits, but the first batch is refused if it already is probability
    vectors, so a probability-returning model is never softmaxed twice without a word.
    """

    level = BLACK_BOX

    def __init__(self, predict: Predictor, *, outputs: Literal["probabilities", "logits"] | None = "probabilities",
                 **kwargs):
        if outputs not in ("probabilities", "logits", None):
            raise SuspectError(f"a black-box suspect returns 'probabilities' or 'logits'; got outputs={outputs!r}.")
        super().__init__(predict, outputs=outputs, **kwargs)

    def probabilities(self, images: Tensor) -> Tensor:
        """Probability vectors (N, K) of ``images``; counts N queries."""
        return self._checked_scores(self._query(images), len(images))

    @classmethod
    def from_model(cls, model: Classifier, *, name: str = "suspect", source: str | None = None,
                   budget: int | None = None) -> BlackBoxAccess:
        """Query a local model for its softmax outputs only."""
        return cls(lambda batch: predict_proba(model, batch), num_classes=model.num_classes,
                   input_shape=(model.in_channels, *model.input_size), name=name, source=source, budget=budget,
                   arch=model.arch)

    def as_label_only(self) -> LabelOnlyAccess:
        """A label-only view of the same suspect, with its own query count and budget."""
        return LabelOnlyAccess(self._predict, num_classes=self.num_classes, input_shape=self.input_shape,
                               outputs=self._outputs, name=self.name, source=self.source, budget=self.budget,
                               batch_size=self.batch_size, arch=self.arch)


class WhiteBoxAccess(BlackBoxAccess):
    """A suspect whose weights we hold (MOVE Sec. 5.2's white-box setting); queries are still counted."""

    level = WHITE_BOX

    def __init__(self, model: Classifier, card: ModelCard | None = None, *, name: str = "suspect",
                 source: str | None = None, budget: int | None = None):
        self.model = model.eval()
        self.card = card
        super().__init__(lambda batch: predict_proba(model, batch), num_classes=model.num_classes,
                         input_shape=(model.in_channels, *model.input_size), name=name, source=source, budget=budget,
                         arch=model.arch)
        _check_finite_outputs(model, self.name, self.source)

    def logits(self, images: Tensor) -> Tensor:
        """The model's logits (N, K) with the autograd graph kept, so gradients reach ``images``
        (data-free attacks train a generator through the victim); counts N queries. The model
        stays in eval mode and its weights are not trained by anyone holding only this access."""
        self._count(images)
        return self.model.eval()(images)

    def as_black_box(self) -> BlackBoxAccess:
        """A black-box view of the same model, with its own query count and budget."""
        return BlackBoxAccess.from_model(self.model, name=self.name, source=str(self.source), budget=self.budget)


SuspectAccess = LabelOnlyAccess  # every access level offers at least labels


def local_access(model: Classifier, level: str, *, name: str = "suspect", source: str | None = None,
                 budget: int | None = None) -> LabelOnlyAccess:
    """A local model seen at ``level``: how the benchmark and the null panel reach models they hold."""
    return restrict(WhiteBoxAccess(model, name=name, source=source, budget=budget), level)


def _check_finite_outputs(model: Classifier, name: str, source: str) -> None:
    """Make every forward pass of ``model`` refuse NaN or infinite outputs, whoever calls it: white-box
    methods read ``access.model`` directly, and a NaN-producing suspect (e.g. a card with a huge mean)
    must not turn into a confident verdict. Inside torch.func transforms (per-sample gradients) outputs
    are not concrete values; training.gradients checks what it computes there. One hook per model; a
    deep copy of the model (an attack's starting point) carries the hook but is not checked by it."""
    if model in _CHECKED_MODELS:
        return
    _CHECKED_MODELS.add(model)
    owner = weakref.ref(model)

    def hook(module: torch.nn.Module, inputs: Any, output: Any) -> None:
        if module is not owner() or not isinstance(output, Tensor) or _not_concrete(output):
            return
        bad = ~torch.isfinite(output.detach())
        if bad.any():
            rows = bad.flatten(1).any(dim=1) if bad.dim() > 1 else bad
            raise SuspectError(
                f"{name} returned NaN or infinite outputs for {int(rows.sum())} of {len(rows)} images.",
                path=source,
                fix="check the model's weights and its card's normalisation (mean, std); a model with NaN or "
                    "infinite outputs cannot be verified.",
            )

    model.register_forward_hook(hook)


_CHECKED_MODELS: weakref.WeakSet = weakref.WeakSet()


def _not_concrete(tensor: Tensor) -> bool:
    """Whether ``tensor`` has no concrete values to check: inside torch.func transforms, or while
    torch.export / torch.compile trace the model (an ONNX export of a suspect)."""
    if torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return True
    wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return bool(wrapped(tensor)) if wrapped is not None else False


def _are_distributions(scores: Tensor) -> bool:
    """Every row in [0, 1] and summing to 1 within PROBABILITY_TOLERANCE."""
    in_range = bool(((scores >= -PROBABILITY_TOLERANCE) & (scores <= 1 + PROBABILITY_TOLERANCE)).all())
    return in_range and bool(((scores.sum(dim=1) - 1).abs() <= PROBABILITY_TOLERANCE).all())


def restrict(access: LabelOnlyAccess, level: str) -> LabelOnlyAccess:
    """``access`` seen at a lower (or the same) ``level``; raises if ``level`` is higher than it offers."""
    check_level(level)
    require_access(access, level, f"--access {level}")
    if level == access.level:
        return access
    if level == BLACK_BOX:
        return access.as_black_box()  # type: ignore[union-attr]  # only a white-box access is above
    return access.as_label_only()  # type: ignore[union-attr]


def require_access(access: LabelOnlyAccess, needed: str, who: str) -> None:
    """Fail at once, naming both levels, when ``access`` offers less than ``needed``."""
    check_level(needed, "needed access")
    if _RANK[access.level] < _RANK[needed]:
        raise SuspectError(
            f"{who} needs {needed} access ({_OFFERS[needed]}), but {access.name} offers only "
            f"{access.level} access ({_OFFERS[access.level]}).",
            path=access.source,
            fix=f"give {who} a suspect with {needed} access, or use a method that needs only {access.level} access.",
        )


def _as_tensor(raw: Any, access: LabelOnlyAccess) -> Tensor:
    if isinstance(raw, Tensor):
        return raw.detach().cpu()
    if isinstance(raw, (list, tuple)) and raw and isinstance(raw[0], np.ndarray) and len(raw) == 1:
        raw = raw[0]  # onnxruntime-style list of outputs
    try:
        return torch.as_tensor(np.asarray(raw))
    except (TypeError, ValueError) as exc:
        raise SuspectError(f"{access.name} returned {_what(raw)}, not an array of numbers.", path=access.source) from exc


def _shape(shape: Sequence[int]) -> str:
    return "x".join(str(v) for v in shape)


def _what(obj: Any) -> str:
    shape = getattr(obj, "shape", None)
    return f"{type(obj).__name__} of shape {tuple(shape)}" if shape is not None else type(obj).__name__
