"""SAC: sample-correlation fingerprints (Guan, Liang, He, "Are You Stealing My Model? Sample Correlation
for Fingerprinting Deep Neural Networks", NeurIPS 2022) — two methods, ``sac-w`` and ``sac-m``.

The owner picks n samples; a model's fingerprint is the n×n matrix of pairwise correlations of its
outputs on them, and a suspect whose matrix is close to the source model's is called stolen. A model
derived from the source keeps how it relates samples to one another, where fingerprints made of
transferable adversarial examples (CAE, IPGuard) fade under adversarial training or transfer learning.

- correlation: cosine similarity of the output vectors, C(i, j) = cos(f(x_i), f(x_j)); black-box the
  outputs are probability vectors, label-only the one-hot of the top-1 label;
- distance: Dist = (1/n²) Σ_ij |C_S(i, j) − C_V(i, j)|, source S against suspect V;
- SAC-w: "wrongly classified normal samples", images the source model misclassifies;
- SAC-m: "CutMix Augmented samples", pairs of defender images, a random box of one pasted into the other.

Evidence here: per sample i, score_i = −(1/n) Σ_j |C_S(i, j) − C_V(i, j)|; their mean, the statistic,
is −Dist (higher = closer to the source). A row's score reads every other sample, so verification
always queries the whole set (the null panel's scores are stored for it by OwnershipMethod.protect).

The paper is not in our papers folder: this follows its abstract and the authors' public code
(github.com/guanjiyang/SAC, read, not copied). Where we chose:
- SAC-w's samples come from the **test split** (the defender's held-out data; the source may have been
  trained on the defender split): misclassified ones in a seeded random order, then — when fewer than n
  are wrong, as on an easy task — the correct ones with the smallest margin (true-class probability
  minus the best other), recorded in the results (``misclassified``). The paper's SAC-w also trains
  surrogate models for it (its abstract: SAC-m "without the need for training the surrogate models");
  the public code keeps samples misclassified by the source and the surrogates alike. We use the
  source's errors only.
- CutMix's box is Yun et al.'s (area share 1 − λ, λ ~ U(0, 1), see data.augment.cutmix); the public
  code pastes a fixed box of 0.2 of the side near a corner instead.
- Label-only outputs are the exact one-hot; the public code softmaxes a smoothed one-hot (an affine map
  of the same cosines: every distance scaled by one factor) and stores (1 − cos) / 2 (halving them).
- The decision (``--rule paper``): stolen iff Dist < d. How the paper sets d we could not read, so d is
  chosen per setting as CAE's ρ is: between held-out surrogates (trained on the source's labels) and
  references (on the ground truth) trained at protection time (cae.choose_threshold on 1 − Dist);
  ``threshold`` sets d by hand.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from modelprove.access import BLACK_BOX, LABEL_ONLY, LabelOnlyAccess, local_access
from modelprove.core.errors import ModelproveError, ProtectionError
from modelprove.core.progress import console
from modelprove.core.seeding import generator
from modelprove.core.verdict import NOT_STOLEN, STOLEN
from modelprove.data.augment import cutmix
from modelprove.data.dataset import ImageDataset
from modelprove.methods import cae
from modelprove.methods.protection import Protection, ensure_writable
from modelprove.models import Classifier, ModelCard, load_model, predict_proba
from modelprove.stats import Evidence, PanelStatistics
from modelprove.stats.rules import Decision
from modelprove.training import evaluate

SAC_W_NAME, SAC_M_NAME = "sac-w", "sac-m"
ACCESS = (BLACK_BOX, LABEL_ONLY)
VERIFY_OPTIONS = ("threshold", "alpha")
STATISTIC = "minus the mean |correlation difference| to the source"


@dataclass
class SacConfig(cae.HeldOutModels):
    """SAC's parameters: n samples (the paper's scale), the held-out models that choose d, and d itself."""

    n: int = 100
    threshold: float | None = None  # the paper's d on Dist; None: chosen per setting from the held-out models
    alpha: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 2:
            raise ModelproveError(f"SacConfig.n must be at least 2 samples (a correlation needs a pair); got {self.n}.")
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise ModelproveError(f"SacConfig.threshold (a distance between cosine matrices) must be in [0, 1]; "
                                  f"got {self.threshold}.")
        if self.threshold is None and min(self.held_out_surrogates, self.held_out_references) < 1:
            raise ModelproveError("SAC chooses its threshold between held-out surrogates and references, but "
                                  "held_out_surrogates or held_out_references is 0.",
                                  fix="keep at least one of each, or set threshold=D.")
        self.check_models()


# -- correlation and distance ---------------------------------------------------------------------------

def correlation(outputs: torch.Tensor) -> torch.Tensor:
    """C(i, j) = cos(o_i, o_j) for the rows of ``outputs`` (n, K): the n×n sample correlation."""
    unit = F.normalize(outputs.double(), dim=1)
    return unit @ unit.T


def row_distances(source: torch.Tensor, suspect: torch.Tensor) -> torch.Tensor:
    """(1/n) Σ_j |C_S(i, j) − C_V(i, j)| per sample i, from the two models' outputs; the mean is Dist."""
    return (correlation(source) - correlation(suspect)).abs().mean(dim=1)


def outputs(probabilities: torch.Tensor, setting: str) -> torch.Tensor:
    """What SAC correlates in ``setting``: the probability vectors, or label-only their top-1 one-hot."""
    if setting == LABEL_ONLY:
        return F.one_hot(probabilities.argmax(dim=1), probabilities.shape[1]).double()
    return probabilities.double()


def suspect_outputs(suspect: LabelOnlyAccess, images: torch.Tensor, setting: str) -> torch.Tensor:
    """The same, asked of a suspect through its access (label-only: only its labels)."""
    if setting == LABEL_ONLY:
        return F.one_hot(suspect.labels(images), suspect.num_classes).double()
    return suspect.probabilities(images).double()


# -- the samples ---------------------------------------------------------------------------------------

def wrong_samples(source: Classifier, test: ImageDataset, n: int, seed: int) -> tuple[torch.Tensor, int]:
    """Rows of ``test`` for SAC-w: those the source misclassifies (seeded order), then the correct ones
    with the smallest margin; -> (n rows, how many of them are misclassified)."""
    if len(test) < n:
        raise ModelproveError(f"SAC-w picks n = {n} test images, but the test data has {len(test)}.",
                              fix="use more test data (--test-limit) or a smaller n.")
    probs = torch.cat([predict_proba(source, test.as_float(rows)) for rows in torch.arange(len(test)).split(4096)])
    true = probs.gather(1, test.labels.view(-1, 1)).squeeze(1)
    other = probs.scatter(1, test.labels.view(-1, 1), -1.0).max(dim=1).values
    wrong = probs.argmax(dim=1) != test.labels
    # Misclassified rows sort first (keys in [-2, -1), a random order), correct ones by margin (>= 0).
    key = torch.where(wrong, torch.rand(len(test), generator=generator(seed)) - 2, true - other)
    rows = key.argsort()[:n]
    return rows, int(wrong[rows].sum())


def cutmix_samples(defender: ImageDataset, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SAC-m's n samples: n seeded pairs of defender images, CutMixed; -> (images, origins (n, 2))."""
    if len(defender) < 2 * n:
        raise ModelproveError(f"SAC-m mixes n = {n} pairs of defender images, but there are {len(defender)}.",
                              fix="use more defender data (--defender-limit) or a smaller n.")
    gen = generator(seed)
    rows = torch.randperm(len(defender), generator=gen)[: 2 * n]
    images = cutmix(defender.as_float(rows[:n]), defender.as_float(rows[n:]), gen)
    return images, defender.indices[rows].view(2, n).T.contiguous()


# -- protect / open ------------------------------------------------------------------------------------

def build(name: str, defender: ImageDataset, test: ImageDataset, out: str | Path, config: SacConfig | None = None,
          *, force: bool = False, model: str | Path | Classifier | None = None,
          defender_models: cae.DefenderModels | None = None) -> cae.CaeProtection:
    """SAC-w or SAC-m (``name``) of the source ``model``: the samples, the source's outputs on them and d
    per setting (from held-out models unless ``config.threshold``), written to ``out``."""
    config = config or SacConfig()
    out = Path(out)
    ensure_writable(out, force)
    source, source_info = cae.load_source(model, defender)
    results: dict[str, Any] = {"source_test_accuracy": evaluate(source, test)}
    if name == SAC_W_NAME:
        rows, results["misclassified"] = wrong_samples(source, test, config.n, config.seed + 5)
        if results["misclassified"] < config.n:
            console.print(f"[bold yellow]warning:[/] SAC-w: the source misclassifies {results['misclassified']} of "
                          f"the {len(test)} test images; the other {config.n - results['misclassified']} samples are "
                          "those it classifies correctly with the smallest margin.", highlight=False)
        images, origins = test.as_float(rows), test.indices[rows]
    else:
        images, origins = cutmix_samples(defender, config.n, config.seed + 5)
    source_probs = predict_proba(source, images)
    models, records = cae.train_defender_models(source, defender, test, config, defender_models)
    held_out: dict[str, dict[str, list[float]]] = {}
    thresholds: dict[str, float] = {}
    for setting in ACCESS:
        held_out[setting] = {role: [float(row_distances(outputs(source_probs, setting), suspect_outputs(
            local_access(m, setting), images, setting)).mean()) for m in getattr(models, role)]
            for role in ("held_out_surrogates", "held_out_references")}
        chosen = cae.choose_threshold([1 - d for d in held_out[setting]["held_out_surrogates"]],
                                      [1 - d for d in held_out[setting]["held_out_references"]], 0.0)
        thresholds[setting] = float(config.threshold if config.threshold is not None else 1 - chosen)
    results.update(samples=int(len(images)), thresholds=thresholds, threshold_source="config" if config.threshold
                   is not None else "held-out models", held_out_distances=held_out, training=records)
    cae.write_fingerprint_protection(out, name, {**asdict(config), **source_info}, source, defender, test, results,
                                     {"images": images, "outputs": source_probs, "origins": origins},
                                     force=force, access=ACCESS)
    return cae.CaeProtection(out, source, images, source_probs.argmax(dim=1), models, results)


@dataclass
class OpenedSac:
    """A SAC protection loaded for verification."""

    protection: Protection
    source_card: ModelCard
    images: torch.Tensor
    source_outputs: torch.Tensor  # the source's probability vectors on the images
    thresholds: dict[str, float]  # d per setting
    config: SacConfig


@dataclass(frozen=True)
class DistanceThreshold:
    """SAC's decision: stolen iff Dist < d (the statistic −Dist above −d), d of the evidence's setting."""

    thresholds: dict[str, float]
    name: str = "paper: correlation distance below d (SAC)"
    uses_panel: bool = False

    def decide(self, evidence: Evidence, alpha: float, panel: PanelStatistics | None = None) -> Decision:
        distance, d = 0.0 - evidence.statistic, self.thresholds[evidence.setting]  # 0.0 -: never "-0.0000"
        stolen = distance < d
        return Decision(STOLEN if stolen else NOT_STOLEN, None, distance, "correlation_distance",
                        f"its correlation distance to the source {distance:.4f} is {'below' if stolen else 'not below'} "
                        f"d = {d:.4f} ({self.name}).", {"threshold": d})


class Sac(cae.FingerprintMethod):
    """SAC-w or SAC-m: one sample-correlation fingerprint, black-box or label-only."""

    access = ACCESS
    config = SacConfig
    verify_options = VERIFY_OPTIONS

    def __init__(self, name: str, description: str):
        self.name = name
        self.description = description

    def build(self, defender, test, out, config, *, force=False, **inputs):
        return build(self.name, defender, test, out, config, force=force, **inputs)

    def open(self, directory) -> OpenedSac:
        protection = Protection.open_for(directory, self.name)
        _, card = load_model(protection.path("source.safetensors"))
        stored = load_file(str(protection.path("fingerprint.safetensors")))
        thresholds = protection.manifest.get("results", {}).get("thresholds")
        if not isinstance(thresholds, dict) or set(thresholds) != set(ACCESS):
            raise ProtectionError("manifest field results.thresholds is missing or incomplete.",
                                  path=protection.directory / "manifest.json",
                                  fix="protect again with this version of modelprove.")
        return OpenedSac(protection, card, stored["images"], stored["outputs"], thresholds,
                         protection.config_as(SacConfig))

    def pool_size(self, opened: OpenedSac, config, setting: str) -> int:
        return len(opened.images)

    def paper_rule(self, opened: OpenedSac, config: SacConfig) -> DistanceThreshold:
        given = config.threshold
        return DistanceThreshold({s: float(given) if given is not None else d for s, d in opened.thresholds.items()})

    def evidence(self, opened: OpenedSac, suspect: LabelOnlyAccess, setting: str, config, rows: torch.Tensor | None,
                 *, reference: bool = True) -> Evidence:
        distances = row_distances(outputs(opened.source_outputs, setting),
                                  suspect_outputs(suspect, opened.images, setting))
        rows = torch.arange(len(opened.images)) if rows is None else rows
        return Evidence(self.name, setting, setting, STATISTIC, -distances[rows].numpy(), rows.numpy(),
                        score_range=(-1.0, 0.0), details={"correlation_distance": float(distances.mean())})


SAC_W = Sac(SAC_W_NAME, "SAC-w: correlation of the source's outputs on test images it misclassifies; "
            "black-box or label-only (Guan et al. 2022)")
SAC_M = Sac(SAC_M_NAME, "SAC-m: correlation of the source's outputs on CutMixed defender images; "
            "black-box or label-only (Guan et al. 2022)")
