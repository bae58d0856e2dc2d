"""Dataset Inference: Ownership Resolution in Machine Learning (DI; Maini et al., ICLR 2021).

A baseline of MOVE (TPAMI Sec. 2.2, Eq. 1 and Sec. 6.1). No training-time change: the victim is a
plain model trained on the defender's private data, and the protection stores what verification needs.

1. Embedding (DI Sec. 5.1): for a sample (x, y), its distance to every class t,
   delta_t = min d(x, x + delta) s.t. f(x + delta) = t (MOVE Eq. 1), estimated two ways:
   - MinGD (white-box): targeted gradient descent on the cross-entropy towards t, one signed step
     (L-inf) or one normalised-gradient step (L2) at a time, for at most ``mingd_steps`` steps; a
     row stops as soon as the model predicts t, and its distance is ||delta|| in that norm
     (a row that never reaches t keeps the distance it walked: a lower bound, like DI's capped
     search). One K-vector per norm in ``norms``; the class x already has gets 0. Each vector is
     ordered [d_y, the other K-1 ascending] (:func:`label_first`; our choice, so the regressor
     does not depend on class indices).
   - Blind Walk (black-box, labels only): ``walk_directions`` random Gaussian directions u with
     ||u||_2 = 1; walk x + k * walk_step * u (clipped to [0, 1]) for k = 1..``walk_steps`` until
     the label differs from y; the distance is k * walk_step (``walk_steps`` * walk_step when it
     never changes). The distances are sorted per sample, since the directions are exchangeable.
     Every walked image is one label query to the suspect, and they are counted.
2. Regressor (DI Sec. 5.2): on the *victim's* embeddings, a small MLP (methods.meta_classifier, as
   MOVE's C) learns private samples (the victim's training data) as 1 and public samples (held-out
   test data) as 0; one regressor per setting.
3. Verification (DI Sec. 5.3): the suspect's embeddings of m private and m public samples from
   pools disjoint from the regressor's, scored by the regressor; a one-sided Welch t-test of
   H0: mu_private <= mu_public, stolen iff p < alpha, effect delta_mu = mu_private - mu_public.

Scaled for CPU (DI uses L1, L2 and L-inf and much longer searches over more samples):
``mingd_steps`` 30, norms L-inf and L2, 10 directions of at most 40 steps, 200 + 200 samples to
fit the regressor. DI needs the victim to treat its training samples differently from unseen ones
(it measures overfitting in the decision margin); a well-generalising small model on
Fashion-MNIST may show little separation, and a model trained independently on the same
distribution should show none. Measured (scripts/dataset_inference_sanity.py, cnn_small, 1 thread):
with 10k private images and 5 epochs (88% on private, 84% on test samples) nothing is flagged, not
even the victim itself (median p 0.48 white-box, 0.53 black-box); with 1k private images and 40
epochs without augmentation (99.5% vs 82%) the victim is flagged black-box in 1 of 3 draws
(median p 0.011), white-box in none (0.15); the independent model is never flagged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from modelprove.access import BLACK_BOX, LABEL_ONLY, WHITE_BOX, LabelOnlyAccess
from modelprove.core.errors import ModelproveError
from modelprove.core.progress import task
from modelprove.core.seeding import generator
from modelprove.data.dataset import ImageDataset
from modelprove.methods.common import TrainsModels, check_same_task, check_t_test_fields, dataset_info, fresh_model
from modelprove.methods.base import OwnershipMethod
from modelprove.stats import Evidence, WelchTTestRule, welch_ttest_greater  # noqa: F401  (the paper's test, by its old name)
from modelprove.methods.meta_classifier import MetaClassifier, MetaClassifierConfig
from modelprove.methods.meta_classifier import load_meta_classifier, train_meta_classifier
from modelprove.methods.protection import Protection, create_protection, ensure_writable
from modelprove.models import Classifier, ModelCard, card_for, load_model, predict_labels, save_model
from modelprove.training import evaluate, train

METHOD = "dataset-inference"
ACCESS = (WHITE_BOX, BLACK_BOX)  # MinGD, Blind Walk (which needs only labels; label-only suspects work too)
VERIFY_OPTIONS = ("m", "m_black_box", "alpha")
NORMS = ("linf", "l2")


@dataclass
class DatasetInferenceConfig(TrainsModels):
    """DI's parameters. The shared fields (arch .. alpha, m) mean what they mean in MoveConfig."""

    arch: str = "cnn_small"
    norms: str = "linf,l2"  # MinGD norms, comma-separated from NORMS
    mingd_steps: int = 30
    mingd_step_linf: float = 0.01  # L-inf step: distances up to 0.3
    mingd_step_l2: float = 0.1  # L2 step: distances up to 3.0
    walk_directions: int = 10
    walk_steps: int = 40
    walk_step: float = 0.25  # L2 length of one Blind Walk step
    regressor_samples: int = 200  # private and as many public samples fit the regressor
    verification_pool: int = 200  # private and as many public samples kept for verification
    regressor_hidden: int = 64
    regressor_epochs: int = 100
    # Seed of which private and public samples fit the regressor and which are kept for verification. Apart
    # from the victim's seed, so protections of one data set share their private pool, and with it the null
    # panel that must never train on it (panel_exclusions).
    pool_seed: int = 0
    m: int = 10  # private and as many public samples per white-box verification (DI: m = 10)
    m_black_box: int = 100  # per black-box verification (MOVE's black-box m)
    alpha: float = 0.01
    epochs: int = 8
    batch_size: int = 128
    lr: float = 0.05
    augmentation: str = "crop"
    seed: int = 0

    def __post_init__(self) -> None:
        self.norm_list()
        if self.mingd_steps < 1 or self.walk_steps < 1 or self.walk_directions < 1:
            raise ModelproveError(
                f"mingd_steps, walk_steps and walk_directions must be >= 1; got {self.mingd_steps}, "
                f"{self.walk_steps}, {self.walk_directions}."
            )
        if min(self.mingd_step_linf, self.mingd_step_l2, self.walk_step) <= 0:
            raise ModelproveError("mingd_step_linf, mingd_step_l2 and walk_step must be positive.")
        if self.regressor_samples < 2 or self.verification_pool < 2:
            raise ModelproveError(f"regressor_samples and verification_pool must be >= 2; got "
                                  f"{self.regressor_samples}, {self.verification_pool}.")
        check_t_test_fields(self, test="a t-test")
        if max(self.m, self.m_black_box) > self.verification_pool:
            raise ModelproveError(
                f"m = {self.m} / m_black_box = {self.m_black_box} exceed verification_pool = {self.verification_pool}.",
                fix="raise verification_pool or lower m.",
            )

    def norm_list(self) -> list[str]:
        names = [name.strip() for name in self.norms.split(",") if name.strip()]
        if not names or any(name not in NORMS for name in names):
            raise ModelproveError(f"norms must be comma-separated names from {', '.join(NORMS)}; got {self.norms!r}.")
        return names


def mingd_distances(model: Classifier, images: torch.Tensor, norm: str, steps: int, step: float,
                    chunk: int = 64) -> torch.Tensor:
    """MinGD (DI Sec. 5.1, white-box): (n, K) distances in ``norm`` from each image to each class.

    Rows (image, target t) descend the cross-entropy of t; each row stops at the first step where
    the model predicts t. The model runs in eval mode and only the perturbations receive gradients.
    """
    if norm not in NORMS:
        raise ModelproveError(f"MinGD norm must be one of {', '.join(NORMS)}, got {norm!r}.")
    was_training = model.training
    model.eval()
    k = model.num_classes
    out = []
    try:
        for start in range(0, len(images), chunk):
            x = images[start : start + chunk].repeat_interleave(k, dim=0)
            targets = torch.arange(k).repeat(len(x) // k)
            delta = torch.zeros_like(x)
            active = torch.ones(len(x), dtype=torch.bool)
            # One forward per step serves both the stopping check and the gradient of the rows that
            # go on; a row that reaches t keeps the delta it had at that check.
            for _ in range(steps):
                rows = active.nonzero().flatten()
                if len(rows) == 0:
                    break
                d = delta[rows].requires_grad_(True)
                logits = model(x[rows] + d)
                going = logits.argmax(1) != targets[rows]
                active[rows[~going]] = False
                if not going.any():
                    break
                loss = F.cross_entropy(logits[going], targets[rows][going], reduction="sum")
                (gradient,) = torch.autograd.grad(loss, d)
                with torch.no_grad():
                    gradient, rows, d = gradient[going], rows[going], d[going]
                    if norm == "linf":
                        move = gradient.sign()
                    else:
                        move = gradient / gradient.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
                    delta[rows] = (x[rows] + d - step * move).clamp(0, 1) - x[rows]
            flat = delta.flatten(1)
            distance = flat.abs().amax(dim=1) if norm == "linf" else flat.norm(dim=1)
            out.append(distance.view(-1, k))
    finally:
        model.train(was_training)
    return torch.cat(out)


def blind_walk_distances(labels_of: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                         labels: torch.Tensor, directions: int, steps: int, step: float,
                         rng: torch.Generator | None = None, seeds: Sequence[int] | None = None) -> torch.Tensor:
    """Blind Walk (DI Sec. 5.1, black-box): (n, directions) sorted distances along random directions.

    ``labels_of`` answers top-1 labels (each image sent is one query); walks stop at the first step
    whose label differs from ``labels``; a walk that never leaves the class gets steps * step. The
    directions come from ``rng``, or from one seed per image (``seeds``): then an image is walked the
    same way whichever other images are walked with it, so a suspect and the null panel are measured
    alike on every row.
    """
    n = len(images)
    if seeds is not None:
        u = torch.cat([torch.randn((directions, *images.shape[1:]), generator=generator(int(s))) for s in seeds])
    else:
        u = torch.randn((n * directions, *images.shape[1:]), generator=rng)
    u = u / u.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    x = images.repeat_interleave(directions, dim=0)
    y = labels.repeat_interleave(directions)
    walked = torch.full((n * directions,), float(steps) * step)
    active = torch.ones(n * directions, dtype=torch.bool)
    for k in range(1, steps + 1):
        rows = active.nonzero().flatten()
        if len(rows) == 0:
            break
        changed = labels_of((x[rows] + k * step * u[rows]).clamp(0, 1)) != y[rows]
        walked[rows[changed]] = k * step
        active[rows[changed]] = False
    return walked.view(n, directions).sort(dim=1).values


@dataclass
class DatasetInferenceProtection:
    directory: Path
    victim: Classifier
    results: dict = field(default_factory=dict)


def label_first(distances: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Order each row of class distances as [distance to the true class y, the others ascending].

    The regressor must not depend on which class index a sample has: in class order, the zero of a
    correctly classified sample would sit at a different position for every class. Keeping d_y apart
    keeps whether the model is right about y (0 when it is), the membership signal DI relies on.
    """
    true = distances.gather(1, labels.view(-1, 1))
    others = distances.masked_fill(F.one_hot(labels, distances.shape[1]).bool(), float("inf")).sort(dim=1).values
    return torch.cat([true, others[:, :-1]], dim=1)


def _white_box_features(model: Classifier, images: torch.Tensor, labels: torch.Tensor,
                        config: DatasetInferenceConfig) -> torch.Tensor:
    step = {"linf": config.mingd_step_linf, "l2": config.mingd_step_l2}
    return torch.cat([label_first(mingd_distances(model, images, norm, config.mingd_steps, step[norm]), labels)
                      for norm in config.norm_list()], dim=1)


def _black_box_features(labels_of: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                        labels: torch.Tensor, config: DatasetInferenceConfig, seed: int) -> torch.Tensor:
    return blind_walk_distances(labels_of, images, labels, config.walk_directions, config.walk_steps,
                                config.walk_step, generator(seed))


def _model_labels(model: Classifier) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: predict_labels(model, x)


def build(
    defender: ImageDataset,
    test: ImageDataset,
    out: str | Path,
    config: DatasetInferenceConfig | None = None,
    *,
    force: bool = False,
) -> DatasetInferenceProtection:
    """Train a plain victim on ``defender`` (private) data, fit DI's regressors against ``test``
    (public) data, and write the protection to ``out``."""
    config = config or DatasetInferenceConfig()
    check_same_task(defender, test)
    need = config.regressor_samples + config.verification_pool
    for data, role in ((defender, "defender (private)"), (test, "test (public)")):
        if len(data) < need:
            raise ModelproveError(
                f"the {role} data {data.name} has {len(data)} images; DI needs regressor_samples + "
                f"verification_pool = {need}.",
                fix="lower regressor_samples / verification_pool, or use more data.",
            )
    out = Path(out)
    ensure_writable(out, force)
    timings: dict[str, float] = {}

    victim = fresh_model(config.arch, defender, config.seed)
    start = time.perf_counter()
    record = train(victim, defender, config.train_config(config.seed), description="victim (plain)")
    timings["train_victim"] = time.perf_counter() - start

    # Private and public samples: one part fits the regressors, a disjoint part is kept for verification.
    def split(data: ImageDataset, seed: int) -> tuple[ImageDataset, ImageDataset]:
        order = torch.randperm(len(data), generator=generator(seed))
        fit = order[: config.regressor_samples].sort().values
        keep = order[config.regressor_samples : need].sort().values
        return data.subset(fit, name=f"{data.name}[fit]"), data.subset(keep, name=f"{data.name}[pool]")

    private_fit, private_pool = split(defender, config.pool_seed + 1)
    public_fit, public_pool = split(test, config.pool_seed + 2)
    meta_config = MetaClassifierConfig(hidden=config.regressor_hidden, epochs=config.regressor_epochs, seed=config.seed)

    regressors, records = {}, {}
    start = time.perf_counter()
    with task("MinGD embeddings (victim)", 2) as bar:
        private_wb = _white_box_features(victim, private_fit.as_float(), private_fit.labels, config)
        bar.advance()
        public_wb = _white_box_features(victim, public_fit.as_float(), public_fit.labels, config)
        bar.advance()
    timings["mingd"] = time.perf_counter() - start
    start = time.perf_counter()
    labels_of = _model_labels(victim)
    private_bb = _black_box_features(labels_of, private_fit.as_float(), private_fit.labels, config, config.seed + 3)
    public_bb = _black_box_features(labels_of, public_fit.as_float(), public_fit.labels, config, config.seed + 4)
    timings["blind_walk"] = time.perf_counter() - start
    start = time.perf_counter()
    for setting, (private, public) in ((WHITE_BOX, (private_wb, public_wb)), (BLACK_BOX, (private_bb, public_bb))):
        regressors[setting], records[setting] = train_meta_classifier(private, public, meta_config)
    timings["regressors"] = time.perf_counter() - start

    def gap(private: torch.Tensor, public: torch.Tensor) -> float:
        return float(private.mean() - public.mean())

    results = {
        "victim_test_accuracy": evaluate(victim, test),
        "victim_private_accuracy": evaluate(victim, private_fit),
        "regressor_white_box": records[WHITE_BOX],
        "regressor_black_box": records[BLACK_BOX],
        # mean distance private - public: DI's signal (private samples lie farther from other classes)
        "mean_distance_gap_mingd": gap(private_wb, public_wb),
        "mean_distance_gap_blind_walk": gap(private_bb, public_bb),
        "seconds": {k: round(v, 2) for k, v in timings.items()},
    }
    data_record = dataset_info(defender, test, regressor_samples=config.regressor_samples,
                               verification_pool=config.verification_pool)
    full_config = {**asdict(config), "regressor": asdict(meta_config)}
    with create_protection(out, METHOD, full_config, force=force) as writer:
        training = {"dataset": defender.name, "test_accuracy": results["victim_test_accuracy"], **record.to_dict()}
        save_model(victim, card_for(victim, defender.classes, training, {"kind": "victim", "method": METHOD}),
                   writer.path("victim.safetensors"))
        for setting, regressor in regressors.items():
            save_file({k: v.contiguous() for k, v in regressor.state_dict().items()},
                      str(writer.path(f"regressor_{setting.replace('-', '_')}.safetensors")))
        save_file(
            {
                "private_images": private_pool.images.contiguous(),
                "private_labels": private_pool.labels.contiguous(),
                "private_indices": private_pool.indices.contiguous(),
                "public_images": public_pool.images.contiguous(),
                "public_labels": public_pool.labels.contiguous(),
                "public_indices": public_pool.indices.contiguous(),
            },
            str(writer.path("samples.safetensors")),
        )
        writer.record(dataset=data_record, results=results, access=ACCESS)
    return DatasetInferenceProtection(directory=out, victim=victim, results=results)


@dataclass
class OpenedDatasetInference:
    protection: Protection
    victim: Classifier
    victim_card: ModelCard
    regressors: dict[str, MetaClassifier]
    samples: dict[str, torch.Tensor]  # the verification pools: private_/public_ images and labels
    config: DatasetInferenceConfig


def open_protection(directory: str | Path | Protection) -> OpenedDatasetInference:
    """Load a DI protection for verification (a path is opened and hash-checked first)."""
    protection = Protection.open_for(directory, METHOD)
    config = protection.config_as(DatasetInferenceConfig)
    victim, card = load_model(protection.path("victim.safetensors"))
    regressors = {setting: load_meta_classifier(protection, f"regressor_{setting.replace('-', '_')}.safetensors")
                  for setting in ACCESS}
    samples = load_file(str(protection.path("samples.safetensors")))
    return OpenedDatasetInference(protection, victim, card, regressors, samples, config)


class DatasetInference(OwnershipMethod):
    """DI's evidence: per pair of a private and a public sample, the regressor's score of the private one
    minus the public one's (its mean is the private-minus-public gap); the paper's test is the Welch
    t-test of the two. Its null is about data — "not trained on the private samples" — so its null panel
    never trains on them (``panel_exclusions``)."""

    name = METHOD
    access = ACCESS
    config = DatasetInferenceConfig
    description = ("Dataset Inference: distances to every class (MinGD white-box, Blind Walk black-box), a "
                   "private-vs-public regressor, private-minus-public score gap (Maini et al. 2021)")
    verify_options = VERIFY_OPTIONS
    needs = {BLACK_BOX: LABEL_ONLY}  # Blind Walk reads only top-1 labels

    def build(self, defender, test, out, config, *, force=False, **inputs):
        return build(defender, test, out, config, force=force)

    def open(self, directory):
        return open_protection(directory)

    def pool_size(self, opened: OpenedDatasetInference, config, setting: str) -> int:
        return min(len(opened.samples["private_images"]), len(opened.samples["public_images"]))

    def paper_rule(self, opened, config) -> WelchTTestRule:
        return WelchTTestRule()

    def panel_exclusions(self, opened: OpenedDatasetInference) -> torch.Tensor:
        return opened.samples["private_indices"]

    def evidence(self, opened: OpenedDatasetInference, suspect: LabelOnlyAccess, setting: str,
                 config: DatasetInferenceConfig, rows: torch.Tensor | None, *, reference: bool = True) -> Evidence:
        samples = opened.samples
        rows = torch.arange(self.pool_size(opened, config, setting)) if rows is None else rows
        scores = {}
        for offset, part in enumerate(("private", "public")):
            images, labels = samples[f"{part}_images"][rows].float() / 255, samples[f"{part}_labels"][rows]
            if setting == WHITE_BOX:
                features = _white_box_features(suspect.model, images, labels, config)  # type: ignore[attr-defined]
            else:  # each pool row walks its own seeded directions
                seeds = [config.seed * 1_000_003 + 2 * int(r) + offset for r in rows]
                features = blind_walk_distances(suspect.labels, images, labels, config.walk_directions,
                                                config.walk_steps, config.walk_step, seeds=seeds)
            scores[part] = opened.regressors[setting].victim_probability(features)
        private, public = scores["private"], scores["public"]
        return Evidence(METHOD, setting, setting, "mean private-minus-public regressor score",
                        (private - public).numpy(), rows.numpy(), score_range=(-1.0, 1.0),
                        paired=(private.numpy(), public.numpy()), reference_name="the public samples",
                        details={"mu_suspect": float(private.mean()), "mu_reference": float(public.mean()),
                                 "embedding": "MinGD" if setting == WHITE_BOX else "Blind Walk"})


DATASET_INFERENCE = DatasetInference()
protect = DATASET_INFERENCE.protect
verify = DATASET_INFERENCE.verify
