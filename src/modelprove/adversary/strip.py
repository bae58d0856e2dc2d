"""STRIP (Gao et al., ACSAC 2019) against ownership evidence (MOVE TPAMI Sec. 7.3.3, Table 12).

STRIP superimposes ``overlays`` clean images x_n on an input x, x_p = clip(a·x + b·x_n, 0, 1) (STRIP's
code: cv2.addWeighted with a = b = 1), and measures the entropy of the model's prediction on each; the
input's score is the mean entropy (STRIP Eq. 4-5, in bits as STRIP's code). A trigger dominates
whatever is superimposed, so triggered inputs keep one class and score low; MOVE's claim is that its
style-transformed images score like clean ones. The detection boundary is the ``frr`` quantile of
clean inputs' entropies (STRIP sets it from the false rejection rate it accepts, e.g. 1%).

:func:`strip_filtered_access` is a thief's server that runs STRIP on every query and answers a
flagged one otherwise: with a random probability vector, the uniform one, or its own answer with the
top class removed ("suppress": a thief who reads STRIP's flags as triggers hides the class they force),
so the verifier's black-box evidence can be measured with and without the filter; it counts the queries
it flagged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from modelprove.access import BlackBoxAccess
from modelprove.core.errors import ModelproveError
from modelprove.core.seeding import generator
from modelprove.models import Classifier, predict_proba


@dataclass
class StripConfig:
    """overlays: clean images superimposed per input (STRIP: 100; its entropies settle by about 20);
    input_weight, overlay_weight: a and b of the superimposition; frr: the share of clean inputs the
    filter may flag (sets the boundary); response: what a flagged query gets ("random": a Dirichlet(1)
    probability vector, "uniform": 1/K for every class); seed: which clean images are superimposed and
    the random answers; "suppress": the model's answer with its top-1 class set to 0, renormalised."""

    overlays: int = 32
    input_weight: float = 1.0
    overlay_weight: float = 1.0
    frr: float = 0.01
    response: Literal["random", "uniform", "suppress"] = "random"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.overlays < 1:
            raise ModelproveError(f"StripConfig.overlays must be at least 1, got {self.overlays}.", fix="use e.g. 32.")
        if self.input_weight <= 0 or self.overlay_weight <= 0:
            raise ModelproveError("StripConfig.input_weight and overlay_weight must be positive.", fix="use 1 and 1.")
        if not 0.0 < self.frr < 1.0:
            raise ModelproveError(f"StripConfig.frr must be in (0, 1), got {self.frr}.", fix="use e.g. 0.01.")
        if self.response not in ("random", "uniform", "suppress"):
            raise ModelproveError(f"StripConfig.response must be 'random', 'uniform' or 'suppress', got {self.response!r}.")


def entropy_bits(probabilities: Tensor) -> Tensor:
    """Shannon entropy in bits of each row of ``probabilities`` (N, K)."""
    p = probabilities.clamp_min(1e-12)
    return -(probabilities * p.log2()).sum(dim=1)


def strip_entropy(model: nn.Module, images: Tensor, clean: Tensor, config: StripConfig | None = None, *,
                  salt: int = 0) -> Tensor:
    """STRIP's score (N,) of float ``images`` in [0, 1]: the mean prediction entropy over ``overlays``
    superimpositions with images drawn from ``clean`` (a seeded draw per call; ``salt`` varies it)."""
    config = config or StripConfig()
    if len(clean) == 0:
        raise ModelproveError("STRIP needs clean images to superimpose; none were given.")
    drawn = torch.randint(len(clean), (len(images), config.overlays), generator=generator(config.seed + salt))
    scores = []
    rows_at_once = max(1, 2048 // config.overlays)
    for start in range(0, len(images), rows_at_once):
        rows = slice(start, start + rows_at_once)
        blended = (config.input_weight * images[rows].unsqueeze(1)
                   + config.overlay_weight * clean[drawn[rows]]).clamp(0, 1)  # (n, overlays, C, H, W)
        entropy = entropy_bits(predict_proba(model, blended.flatten(0, 1)))
        scores.append(entropy.view(-1, config.overlays).mean(dim=1))
    return torch.cat(scores) if scores else images.new_zeros(0)


class StripFilter:
    """STRIP's boundary for one model, set on clean held-out images: an input whose entropy is below the
    ``frr`` quantile of theirs is flagged."""

    def __init__(self, model: nn.Module, clean: Tensor, config: StripConfig | None = None, *,
                 calibration: Tensor | None = None):
        """``clean``: the images superimposed; ``calibration``: clean inputs the boundary is set on
        (default: ``clean`` itself, scored against the same pool)."""
        self.model, self.clean, self.config = model, clean, config or StripConfig()
        calibration = clean if calibration is None else calibration
        self.calibration_entropy = strip_entropy(model, calibration, clean, self.config, salt=1)
        self.boundary = float(torch.quantile(self.calibration_entropy, self.config.frr))

    def flags(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(flagged (N,) bool, entropy (N,)) of float ``images``."""
        entropy = strip_entropy(self.model, images, self.clean, self.config, salt=2)
        return entropy < self.boundary, entropy


class StripFilteredAccess(BlackBoxAccess):
    """A black-box server of ``model`` behind a :class:`StripFilter`: a flagged query is answered at
    random (``response``), every other one by the model; ``flagged`` counts the flagged queries."""

    def __init__(self, model: Classifier, strip: StripFilter, *, name: str = "suspect behind STRIP"):
        self.strip, self.flagged, self._model = strip, 0, model
        self._answers = torch.Generator().manual_seed(strip.config.seed + 3)
        super().__init__(self._answer, num_classes=model.num_classes,
                         input_shape=(model.in_channels, *model.input_size), name=name, arch=model.arch)

    def _answer(self, batch: Tensor) -> Tensor:
        answers = predict_proba(self._model, batch)
        flagged, _ = self.strip.flags(batch)
        self.flagged += int(flagged.sum())
        if flagged.any():
            k = answers.shape[1]
            if self.strip.config.response == "uniform":
                noise = torch.full((int(flagged.sum()), k), 1.0 / k)
            elif self.strip.config.response == "suppress":
                noise = answers[flagged].scatter(1, answers[flagged].argmax(1, keepdim=True), 0.0)
                noise = noise / noise.sum(dim=1, keepdim=True).clamp_min(1e-12)
            else:
                noise = -torch.rand(int(flagged.sum()), k, generator=self._answers).clamp_min(1e-12).log()
                noise = noise / noise.sum(dim=1, keepdim=True)  # Dirichlet(1, ..., 1)
            answers = answers.clone()
            answers[flagged] = noise
        return answers


def strip_filtered_access(model: Classifier, clean: Tensor, config: StripConfig | None = None, *,
                          calibration: Tensor | None = None, name: str = "suspect behind STRIP") -> StripFilteredAccess:
    """``model`` served behind STRIP, its boundary set on ``calibration`` (default ``clean``)."""
    return StripFilteredAccess(model, StripFilter(model, clean, config, calibration=calibration), name=name)
