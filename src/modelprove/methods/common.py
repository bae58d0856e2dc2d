"""What the ownership methods share: a fresh model for the defender's task, the checks their configs
and ``protect`` functions repeat, the verification preamble, and the verdict of a one-sided t-test.

Each piece was written out by hand in several methods (MOVE, BadNets, EWE, Dataset Inference, the
key-sample and fingerprint methods) with the same logic; one copy keeps their behaviour identical.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import torch

from modelprove.access import BLACK_BOX, WHITE_BOX, LabelOnlyAccess, WhiteBoxAccess, require_access
from modelprove.core.errors import ModelproveError
from modelprove.core.seeding import generator
from modelprove.core.verdict import Verdict
from modelprove.data.dataset import ImageDataset
from modelprove.methods.protection import Protection
from modelprove.models import Classifier, ModelCard, build_model
from modelprove.stats import PairedTTest, paired_ttest_greater
from modelprove.stats.sequential import ABOVE, RULE, UNDECIDED, SequentialResult, sequential_mean_test
from modelprove.training import TrainConfig


def fresh_model(arch: str, data: ImageDataset, seed: int) -> Classifier:
    """A new ``arch`` classifier for ``data``'s task, normalised with its pixel statistics (from at most
    10,000 images) and initialised after ``torch.manual_seed(seed)``."""
    channels, height, width = data.input_shape
    sample = data.as_float(torch.arange(min(len(data), 10000)))
    mean, std = sample.mean(dim=(0, 2, 3)).tolist(), sample.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    torch.manual_seed(seed)
    return build_model(arch, channels, data.num_classes, (height, width), mean=mean, std=std)


def check_same_task(defender: ImageDataset, test: ImageDataset) -> None:
    """``protect`` needs defender and test data of one task: the same input shape and classes."""
    if defender.input_shape != test.input_shape or defender.classes != test.classes:
        raise ModelproveError(
            f"the defender data {defender.name} {defender.input_shape} and test data {test.name} "
            f"{test.input_shape} do not describe the same task."
        )


def dataset_info(defender: ImageDataset, test: ImageDataset, **extra: Any) -> dict[str, Any]:
    """The manifest's ``dataset`` record: which data made the protection (and method-specific counts)."""
    return {"defender": defender.name, "defender_size": len(defender), "test": test.name,
            "classes": defender.classes, "input_shape": list(defender.input_shape), **extra}


class TrainsModels:
    """For method configs with the trainer's fields (epochs, batch_size, lr, augmentation, seed)."""

    epochs: int
    batch_size: int
    lr: float
    augmentation: str
    seed: int

    def train_config(self, seed: int | None = None, epochs: int | None = None) -> TrainConfig:
        """The trainer's settings for a model of this method (seed and epochs default to the config's)."""
        return TrainConfig(epochs=self.epochs if epochs is None else epochs, batch_size=self.batch_size, lr=self.lr,
                           augmentation=self.augmentation, seed=self.seed if seed is None else seed)


def check_t_test_fields(config: Any, test: str = "a paired t-test") -> None:
    """The checks of the verification fields m, m_black_box (per setting) and alpha."""
    for name in ("m", "m_black_box"):
        if getattr(config, name) < 2:
            raise ModelproveError(f"{name} must be at least 2 for {test}, got {getattr(config, name)}.")
    if not 0.0 < config.alpha < 1.0:
        raise ModelproveError(f"alpha must be in (0, 1), got {config.alpha}.")


def check_sequential_fields(config: Any) -> None:
    """The checks of the sequential verification fields (see :func:`sequential_paired_test`)."""
    if config.sequential_batch < 1:
        raise ModelproveError(f"sequential_batch must be at least 1 image, got {config.sequential_batch}.")
    margin = getattr(config, "margin", 0.0)
    if not margin <= config.sequential_clear < 1.0:
        raise ModelproveError(
            f"sequential_clear must be in [margin, 1) = [{margin}, 1), got {config.sequential_clear}: a suspect is "
            "cleared once its mean paired difference is known to be below it.")


def verification_config(config: Any, options: dict, verify_options: tuple[str, ...], who: str) -> Any:
    """The protection's ``config`` with the verifier's ``options`` (only VERIFY_OPTIONS) applied; the
    config's own checks validate the new values."""
    unknown = sorted(set(options) - set(verify_options))
    if unknown:
        raise ModelproveError(
            f"{who} verification has no option {', '.join(unknown)}; it takes {', '.join(verify_options)}.",
            fix=f"other {who} parameters define the protection; protect again to change them.",
        )
    return replace(config, **{k: v for k, v in options.items() if v is not None})


def open_suspect(
    suspect: LabelOnlyAccess | Classifier,
    *,
    suspect_name: str | None,
    setting: str | None,
    access: tuple[str, ...],
    who: str,
    card: ModelCard,
    protection: Protection,
    needs: dict[str, str] | None = None,
    settings: str | None = None,
) -> tuple[LabelOnlyAccess, str, str]:
    """The suspect as an access level (a bare model is white-box), its name, and the setting to verify
    in: white-box when the suspect offers its weights, else black-box, unless ``setting`` says.

    The suspect must offer ``needs[setting]`` (default: the setting itself) and the victim's input
    shape and classes. ``settings`` names the settings in the error (default: ``access``).
    """
    if isinstance(suspect, Classifier):
        suspect = WhiteBoxAccess(suspect, name=suspect_name or "suspect")
    name = suspect_name or suspect.name
    if setting is None:
        setting = WHITE_BOX if suspect.level == WHITE_BOX else BLACK_BOX
    if setting not in access:
        raise ModelproveError(f"{who} verifies {settings or ' or '.join(access)}, not {setting!r}.")
    require_access(suspect, (needs or {}).get(setting, setting), f"{who} {setting} verification")
    suspect.check_input(card.input_shape, card.num_classes, what=f"the protection {protection.directory}")
    return suspect, name, setting


def draw_rows(config: Any, setting: str, pool_size: int, seed: int, *,
              what: str = "images of the verification pool", remedy: str = "") -> torch.Tensor:
    """The rows of one verification: m of them (``config.m`` white-box, ``config.m_black_box`` else),
    drawn at random by ``seed`` from a pool of ``pool_size``, which must hold them."""
    m = config.m if setting == WHITE_BOX else config.m_black_box
    if m > pool_size:
        raise ModelproveError(f"m = {m} exceeds the {pool_size} {what}.", fix=f"use m <= {pool_size}{remedy}.")
    return torch.randperm(pool_size, generator=generator(seed))[:m]


@dataclass(frozen=True)
class SequentialPairedTest:
    """A paired test of H0: mean(suspect - reference) <= margin asked a batch at a time (MOVE Eq. 9's
    question, with the queries stopped as soon as the answer is certain); reads like a TTest."""

    p_value: float  # Bonferroni: 2 x the smaller of the sequential and (if reached) the fixed-m p-value
    delta_mu: float
    statistic: float  # log capital of the bettor against H0
    degenerate: bool
    samples: int
    sequential: SequentialResult
    t_test: PairedTTest | None  # the fixed-m paired t-test, when the sequential test ran out undecided
    suspect_scores: np.ndarray
    reference_scores: np.ndarray

    @property
    def decided_by(self) -> str:
        return "sequential" if self.t_test is None else "fixed-m t-test"

    @property
    def rule(self) -> str:
        seq = self.sequential
        if self.t_test is None:
            how = (f"{'above' if seq.decision == ABOVE else 'below'} "
                   f"{seq.threshold if seq.decision == ABOVE else seq.below_threshold:g} after {seq.samples} images")
        else:
            how = f"undecided after {seq.samples} images, then the paired t-test at alpha/2"
        return f"sequential: {RULE}, alpha/2 each; {how}"

    def record(self) -> dict[str, Any]:
        seq = self.sequential
        return {"rule": self.rule, "decided_by": self.decided_by,
                "sequential": {"decision": seq.decision, "samples": seq.samples, "threshold": seq.threshold,
                               "clear_below": seq.below_threshold, "alpha": seq.alpha,
                               "p_above": seq.p_above, "p_below": seq.p_below,
                               "cs_lower": seq.cs_lower, "cs_upper": seq.cs_upper,
                               "steps": [h["samples"] for h in seq.history]},
                **({"fixed_m_p_value": self.t_test.p_value} if self.t_test is not None else {})}


def sequential_paired_test(
    score_rows: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    rows: torch.Tensor,
    *,
    pool_size: int,
    alpha: float,
    batch: int,
    margin: float = 0.0,
    clear: float = 0.3,
) -> SequentialPairedTest:
    """The paired one-sided test of a fixed-m design, run sequentially over the same ``rows`` in order.

    ``score_rows(r)`` queries the suspect on the pool rows ``r`` and returns the suspect's and the
    reference's per-sample scores, each in [0, 1] (so differences lie in [-1, 1]). ``rows`` are the
    fixed design's m rows, a seeded uniformly random order of a pool of ``pool_size``: the betting test
    of :mod:`modelprove.stats.sequential` (without replacement) stops as soon as the pool's mean
    difference is above ``margin`` (stolen) or below ``clear`` (cleared: the suspect is known to be
    far less victim-like than a copy), at alpha/2 each. If all m rows are spent undecided, the
    fixed-m paired t-test on them decides at alpha/2. By the union bound the false-accusation rate
    stays <= alpha: P(sequential "above") <= alpha/2 by Ville's inequality, P(t-test) <= alpha/2.
    """
    suspect_scores: list[torch.Tensor] = []
    reference_scores: list[torch.Tensor] = []

    def next_differences(count: int) -> np.ndarray:
        done = sum(len(s) for s in suspect_scores)
        suspect, reference = score_rows(rows[done:done + count])
        suspect_scores.append(suspect.detach().double().cpu())
        reference_scores.append(reference.detach().double().cpu())
        return (suspect_scores[-1] - reference_scores[-1]).numpy()

    result = sequential_mean_test(next_differences, margin, below=clear, lower=-1.0, upper=1.0, alpha=alpha / 2,
                                  batch=batch, max_samples=len(rows), pool_size=pool_size)
    suspect = torch.cat(suspect_scores).numpy()
    reference = torch.cat(reference_scores).numpy()
    t_test = paired_ttest_greater(suspect, reference, margin=margin) if result.decision == UNDECIDED else None
    p_sequential = result.p_above
    p_value = min(1.0, 2 * (p_sequential if t_test is None else min(p_sequential, t_test.p_value)))
    return SequentialPairedTest(
        p_value=p_value, delta_mu=float((suspect - reference).mean()),
        statistic=result.history[-1]["log_capital_above"] if result.history else 0.0, degenerate=False,
        samples=result.samples, sequential=result, t_test=t_test, suspect_scores=suspect, reference_scores=reference)


class TTest(Protocol):
    """A one-sided t-test's result (stats.PairedTTest, or dataset_inference's Welch test)."""

    p_value: float
    delta_mu: float
    statistic: float
    degenerate: bool


def t_test_verdict(
    test: TTest,
    *,
    method: str,
    setting: str,
    suspect: LabelOnlyAccess,
    name: str,
    alpha: float,
    samples: int,
    start: float,
    queries_before: int,
    protection: Protection,
    seed: int,
    details: dict[str, Any],
) -> Verdict:
    """The verdict of a one-sided t-test of H0: mu_suspect <= mu_reference (MOVE Sec. 5.4, Eq. 9):
    stolen iff p < alpha, effect delta_mu. Queries count only when the suspect was queried (not
    white-box); ``start`` is the ``time.perf_counter()`` at which verification began; ``details`` (the
    method's own values) are followed by the test's statistic, the seed and the suspect's access."""
    return Verdict(
        method=method,
        setting=setting,
        suspect=name,
        stolen=test.p_value < alpha,
        p_value=test.p_value,
        alpha=alpha,
        effect=test.delta_mu,
        effect_name="delta_mu",
        samples=samples,
        queries=suspect.queries - queries_before if setting != WHITE_BOX else None,
        seconds=round(time.perf_counter() - start, 3),
        hashes=protection.hashes(victim_weights="victim.safetensors"),
        details={
            **details,
            "t_statistic": test.statistic,
            "degenerate": test.degenerate,
            "seed": seed,
            "suspect_access": suspect.level,
            # A remote suspect's queries: the digest of every request and response (access/remote.py).
            **({"transcript": suspect.transcript.summary()} if hasattr(suspect, "transcript") else {}),
        },
    )
