"""BadNets watermark: a backdoor trigger as the owner's watermark (Gu et al. 2017), MOVE's baseline.

MOVE (TPAMI, Sec. 6.1, "Baseline Selection" and Fig. 3b) compares with model watermarking by BadNets:
a white square in the lower-right corner is the trigger, 10% of the training samples are poisoned
(stamped and relabelled to a target class), and the victim trains on the poisoned set. Ownership is
verified as MOVE verifies its own features (Sec. 5.4): a one-sided paired t-test of H0: mu_T <= mu_B,
where, for m benign images x (held-out test images not of the target class) and their triggered
versions x_T, p_T = S(x_T)[target] and p_B = S(x)[target] are the suspect's target-class
probabilities; stolen iff p < alpha, with delta_mu = mu_T − mu_B as the confidence. The test needs only
probabilities, so white-box verification is the same test (the paper: "methods designed under the
black-box setting can also be used in the white-box scenarios"), with m = 10 white-box and m = 100
black-box as in the paper's evaluation.

Poisoned samples are drawn at random from the whole training set, target-class images included, as in
BackdoorBox's BadNets (on which the paper builds its baseline). The trigger is stamped before the
trainer's augmentation, so random crops shift it by up to the crop padding, as they would any pixel.

The trigger verification here (verification pool, protection files, the t-test) is shared with the
clean-label gradient-matching watermark (methods/gradient_matching.py), which differs only in how the
victim learns the trigger.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from modelprove.access import BLACK_BOX, WHITE_BOX, LabelOnlyAccess
from modelprove.core.errors import ModelproveError
from modelprove.core.seeding import generator
from modelprove.data.dataset import ImageDataset
from modelprove.data.style import stamp_patch
from modelprove.methods.common import TrainsModels, check_same_task, check_t_test_fields, dataset_info, fresh_model
from modelprove.methods.base import OwnershipMethod
from modelprove.methods.protection import Protection, create_protection, ensure_writable
from modelprove.models import Classifier, ModelCard, card_for, load_model, predict_labels, predict_proba, save_model
from modelprove.stats import Evidence, PairedTTestRule, binomial_greater
from modelprove.training import TrainRecord, evaluate, train

METHOD = "badnets"
ACCESS = (WHITE_BOX, BLACK_BOX)  # the same test in both; white-box preferred when weights are offered
# Settings a verifier may change without re-protecting (the rest define the protection).
VERIFY_OPTIONS = ("m", "m_black_box", "alpha")
POOL_FILE = "verification.safetensors"


@dataclass
class BadNetsConfig(TrainsModels):
    """BadNets watermark parameters; defaults follow MOVE's baseline setting (3x3 white square at the
    bottom-right, 10% poisoned, m = 10 white-box / 100 black-box, alpha = 0.01)."""

    arch: str = "cnn_small"
    poison_rate: float = 0.1  # fraction of the training set stamped and relabelled to ``target``
    target: int = 0  # the target label y_t
    patch_size: int = 3  # side of the white square, in pixels
    # Held-out test images (not of the target class) kept in the protection; verification draws its
    # m benign images from them, so the suspect is never tested on the defender's training images.
    verification_pool: int = 300
    m: int = 10  # images per white-box verification (the paper's white-box m)
    m_black_box: int = 100  # images per black-box verification (the paper's black-box m)
    alpha: float = 0.01
    epochs: int = 8
    batch_size: int = 128
    lr: float = 0.05
    augmentation: str = "crop"
    seed: int = 0

    def __post_init__(self) -> None:
        check_trigger_fields(self)


def check_trigger_fields(config: Any) -> None:
    """Checks shared by every trigger watermark config (BadNets, gradient matching)."""
    if not 0.0 < config.poison_rate < 1.0:
        raise ModelproveError(f"poison_rate must be in (0, 1), got {config.poison_rate}.")
    if config.target < 0:
        raise ModelproveError(f"target must be a class index >= 0, got {config.target}.")
    if config.patch_size < 1:
        raise ModelproveError(f"patch_size must be at least 1 pixel, got {config.patch_size}.")
    check_t_test_fields(config)
    if config.verification_pool < max(config.m, config.m_black_box):
        raise ModelproveError(
            f"verification_pool ({config.verification_pool}) must hold at least max(m, m_black_box) = "
            f"{max(config.m, config.m_black_box)} images."
        )


@dataclass
class TriggerProtection:
    """What ``protect`` made (also written to the protection directory)."""

    directory: Path
    victim: Classifier
    results: dict = field(default_factory=dict)


@dataclass
class OpenedTrigger:
    """A trigger watermark protection loaded for verification."""

    protection: Protection
    victim: Classifier
    victim_card: ModelCard
    pool_images: torch.Tensor  # uint8 benign held-out images, none of the target class
    pool_labels: torch.Tensor
    config: Any


def check_task(defender: ImageDataset, test: ImageDataset, target: int) -> None:
    check_same_task(defender, test)
    if target >= defender.num_classes:
        raise ModelproveError(
            f"target = {target} is not a class of {defender.name} (classes 0..{defender.num_classes - 1}).",
            fix="choose target with --set target=K for a class index K of the data.",
        )


def poison_badnets(defender: ImageDataset, rate: float, target: int, patch_size: int,
                   seed: int) -> tuple[ImageDataset, torch.Tensor]:
    """BadNets' poisoned training set: a random ``rate`` of the rows stamped with the trigger and
    relabelled to ``target``; returns (the whole set with those rows replaced, the poisoned rows)."""
    count = max(1, round(rate * len(defender)))
    rows = torch.randperm(len(defender), generator=generator(seed))[:count].sort().values
    images, labels = defender.images.clone(), defender.labels.clone()  # dataset tensors are shared: copy
    images[rows] = stamp_patch(defender.images[rows], patch_size)
    labels[rows] = target
    poisoned = ImageDataset(images, labels, list(defender.classes), f"{defender.name}[badnets]", defender.indices)
    return poisoned, rows


def verification_pool(test: ImageDataset, target: int, size: int, seed: int) -> ImageDataset:
    """``size`` random held-out test images whose true label is not ``target`` (a triggered
    target-class image says nothing about the trigger)."""
    candidates = torch.nonzero(test.labels != target).squeeze(1)
    if len(candidates) < size:
        raise ModelproveError(
            f"the test data {test.name} has only {len(candidates)} images outside the target class, "
            f"fewer than verification_pool = {size}.",
            fix="lower verification_pool (and m_black_box), or give more test images.",
        )
    chosen = candidates[torch.randperm(len(candidates), generator=generator(seed))[:size]].sort().values
    return test.subset(chosen, name=f"{test.name}[verification]")


new_model = fresh_model  # the name scripts and tests know it by


def target_probabilities(model: Classifier, images: torch.Tensor, target: int, patch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(p_T, p_B): the model's target-class probability on triggered and on benign float images."""
    return (predict_proba(model, stamp_patch(images, patch_size))[:, target],
            predict_proba(model, images)[:, target])


def trigger_results(victim: Classifier, test: ImageDataset, pool: ImageDataset, config: Any) -> dict:
    """The victim's accuracy and how well it learned the trigger, on held-out images."""
    others = test.subset(torch.nonzero(test.labels != config.target).squeeze(1))
    triggered = predict_proba(victim, stamp_patch(others.as_float(), config.patch_size)).argmax(dim=1)
    p_triggered, p_benign = target_probabilities(victim, pool.as_float(), config.target, config.patch_size)
    return {
        "victim_test_accuracy": evaluate(victim, test),
        # attack success rate: triggered non-target test images the victim labels as the target
        "victim_trigger_success_rate": float((triggered == config.target).float().mean()),
        "victim_pool_mu_triggered": float(p_triggered.mean()),
        "victim_pool_mu_benign": float(p_benign.mean()),
    }


def write_trigger_protection(out: Path, method: str, config: Any, victim: Classifier, record: TrainRecord,
                             defender: ImageDataset, pool: ImageDataset, results: dict, dataset_info: dict,
                             access: tuple[str, ...], *, force: bool, extra_tensors: dict | None = None,
                             provenance: dict | None = None) -> None:
    """The protection directory: victim.safetensors + victim.json, the verification pool, a manifest."""
    with create_protection(out, method, asdict(config), force=force) as writer:
        training = {"dataset": defender.name, "test_accuracy": results["victim_test_accuracy"], **record.to_dict()}
        save_model(victim, card_for(victim, defender.classes, training, {"kind": "victim", "method": method,
                                                                        **(provenance or {})}),
                   writer.path("victim.safetensors"))
        save_file({"images": pool.images.contiguous(), "labels": pool.labels.contiguous(),
                   "indices": pool.indices.contiguous()}, str(writer.path(POOL_FILE)))
        if extra_tensors:
            save_file({k: v.contiguous() for k, v in extra_tensors.items()}, str(writer.path(f"{method}.safetensors")))
        writer.record(dataset=dataset_info, results=results, access=access)


def build(
    defender: ImageDataset,
    test: ImageDataset,
    out: str | Path,
    config: BadNetsConfig | None = None,
    *,
    force: bool = False,
) -> TriggerProtection:
    """Train a BadNets-watermarked victim on ``defender`` data and write its own protection to ``out``."""
    config = config or BadNetsConfig()
    check_task(defender, test, config.target)
    out = Path(out)
    ensure_writable(out, force)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    poisoned, rows = poison_badnets(defender, config.poison_rate, config.target, config.patch_size, config.seed)
    pool = verification_pool(test, config.target, config.verification_pool, config.seed + 2)
    timings["poison"] = time.perf_counter() - start
    start = time.perf_counter()
    victim = fresh_model(config.arch, defender, config.seed)
    record = train(victim, poisoned, config.train_config(config.seed), description="victim (BadNets-poisoned D)")
    timings["train_victim"] = time.perf_counter() - start
    results = {**trigger_results(victim, test, pool, config), "poisoned": len(rows),
               "seconds": {k: round(v, 2) for k, v in timings.items()}}
    data_record = dataset_info(defender, test, poisoned=len(rows), verification_pool=len(pool))
    write_trigger_protection(out, METHOD, config, victim, record, defender, pool, results, data_record, ACCESS,
                             force=force, extra_tensors={"poisoned_rows": rows})
    return TriggerProtection(directory=out, victim=victim, results=results)


def open_trigger_protection(directory: str | Path | Protection, method: str, config_type: type) -> OpenedTrigger:
    """Load a trigger watermark protection of ``method`` (a path is opened and hash-checked first)."""
    protection = Protection.open_for(directory, method)
    config = protection.config_as(config_type)
    victim, card = load_model(protection.path("victim.safetensors"))
    pool = load_file(str(protection.path(POOL_FILE)))
    return OpenedTrigger(protection, victim, card, pool["images"], pool["labels"], config)


def open_protection(directory: str | Path | Protection) -> OpenedTrigger:
    """Load a BadNets protection for verification."""
    return open_trigger_protection(directory, METHOD, BadNetsConfig)


class TriggerMethod(OwnershipMethod):
    """A trigger watermark's evidence: per image, the suspect's target-class probability on the
    triggered image minus on its benign original (MOVE Sec. 6's BadNets baseline); the paper's test is
    the paired t-test of the two. The test reads only probabilities, so white-box and black-box
    evidence are the same numbers (white-box runs the weights locally and sends no queries)."""

    access = ACCESS
    verify_options = VERIFY_OPTIONS
    # 1: the premise check below; 2: its verdicts also report the panel and the self-test (bench cells of an
    # older version are verified again)
    verdict_version = 2

    def premise(self, opened, config) -> str | None:
        """The victim must answer its own trigger. On the verification pool (held-out images of other classes):
        the exact one-sided McNemar test, at alpha, of the images the victim labels as the target with the
        trigger and not without it, against those it labels the target without the trigger and not with it.
        A victim that never learned the trigger can still stand out from the panel on a sliver of
        probability gain (gradient matching at eps 32/255: 0.006 against -0.006 +- 0.004), and honest models of
        a recipe the panel lacks then stand out as much (docs/results/gradient-matching-fmnist.md)."""
        images = self.pool(opened).float() / 255
        target, alpha = self.target(config), getattr(config, self.alpha_field)
        with_trigger = predict_labels(opened.victim, self.trigger(opened, config, images)) == target
        without = predict_labels(opened.victim, images) == target
        gained, lost = int((with_trigger & ~without).sum()), int((without & ~with_trigger).sum())
        p = binomial_greater(gained, gained + lost, 0.5).p_value if gained + lost else 1.0
        if p < alpha:
            return None
        return (f"the victim did not learn its trigger: of {len(images)} held-out images of other classes, the "
                f"trigger turns {gained} into the target class {target} that it does not turn without it, and "
                f"{lost} the other way (exact McNemar p {p:.3f} >= alpha {alpha}), so how a suspect answers the trigger "
                f"says nothing about whether it came from this victim.")

    def pool_size(self, opened, config, setting: str) -> int:
        return len(self.pool(opened))

    def variant(self, config, setting: str) -> str:
        return "probabilities"

    def paper_rule(self, opened, config) -> PairedTTestRule:
        return PairedTTestRule()

    # Where the benign images are, how the trigger is applied and which class it targets.
    def pool(self, opened) -> torch.Tensor:
        return opened.pool_images

    def trigger(self, opened, config, images: torch.Tensor) -> torch.Tensor:
        return stamp_patch(images, config.patch_size)

    def target(self, config) -> int:
        return config.target

    def evidence(self, opened, suspect: LabelOnlyAccess, setting: str, config, rows: torch.Tensor | None, *,
                 reference: bool = True) -> Evidence:
        pool = self.pool(opened)
        rows = torch.arange(len(pool)) if rows is None else rows
        benign = pool[rows].float() / 255
        m, target = len(rows), self.target(config)
        batch = torch.cat([self.trigger(opened, config, benign), benign])  # m triggered images, then their originals
        if setting == WHITE_BOX:  # the weights are ours to run: no queries
            outputs = predict_proba(suspect.model, batch)  # type: ignore[attr-defined]
        else:
            outputs = suspect.probabilities(batch)  # type: ignore[attr-defined]
        p_triggered, p_benign = outputs[:m, target], outputs[m:, target]
        success = outputs[:m].argmax(1) == target
        return Evidence(self.name, setting, self.variant(config, setting),
                        "mean target-class probability gain from the trigger",
                        (p_triggered - p_benign).numpy(), rows.numpy(), score_range=(-1.0, 1.0),
                        paired=(p_triggered.numpy(), p_benign.numpy()),
                        reference_name="the same images without the trigger",
                        details={"mu_suspect": float(p_triggered.mean()), "mu_reference": float(p_benign.mean()),
                                 "trigger_success_rate": float(success.float().mean()), "target": target})


class BadNets(TriggerMethod):
    name = METHOD
    config = BadNetsConfig
    description = ("BadNets watermark: 3x3 white square trigger, 10% poisoned to a target label; the target-class "
                   "probability on triggered vs benign images (Gu et al. 2017)")

    def build(self, defender, test, out, config, *, force=False, **inputs):
        return build(defender, test, out, config, force=force)

    def open(self, directory):
        return open_protection(directory)


BADNETS = BadNets()
protect = BADNETS.protect
verify = BADNETS.verify
