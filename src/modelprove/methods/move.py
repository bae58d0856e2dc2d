"""MOVE: model ownership verification via embedded external features (Li et al., AAAI 2022 / TPAMI).

White-box setting (MOVE Sec. 5):
1. Embed external features (Sec. 5.2, Eq. 4): a fraction gamma of the defender's training set is
   style-transferred, x' = T(x, x_style), labels unchanged; the victim V trains on D_b ∪ D_t, a
   benign model B of the same architecture on the untouched D.
2. Meta-classifier (Sec. 5.3, Eq. 5-6): C learns g_V(x') = sign(∇_θ L(V(x'), y)) as +1 and
   g_B(x') as -1, over transformed images x'. By default each weight's signs are summarised per
   layer (``reduction``) and C sees several benign models; see MoveConfig for why.
3. Verification (Sec. 5.4, Eq. 9): for m transformed images, p_S = P[C(g_S(x')) = victim] and
   p_B = P[C(g_B(x')) = victim]; a one-sided paired t-test of H0: mu_S <= mu_B; stolen iff p < alpha,
   with delta_mu = mu_S − mu_B as the confidence.

Black-box setting (Sec. 5.3, Eq. 7-8): only probability vectors. For a transformed image x' and its
benign original x, A_M(x, x') = CAT_i [M(f_i(x')) − M(x)] over N augmentations f_i (the paper's
five: identity, horizontal flip, shifts towards bottom-right, right and bottom), a K·N vector; a
second meta-classifier learns A_V as +1 and A_B as −1, and verification is the same paired t-test
over m = 100 images. The suspect's architecture is free.

Transformed images are split once, at protection time, into a part that trains C and a disjoint
verification pool (``meta_fraction``), so the test never scores C on images it was fitted to.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file

from modelprove.access import BLACK_BOX, WHITE_BOX, LabelOnlyAccess
from modelprove.core.errors import ModelproveError, ProtectionError, SuspectError
from modelprove.core.fileio import atomic_write_bytes
from modelprove.core.progress import task
from modelprove.core.seeding import generator
from modelprove.data.dataset import ImageDataset
from modelprove.data.augment import hflip, translate
from modelprove.data.style import (
    StyleTransformer,
    bundled_style_names,
    bundled_style_path,
    load_style_image,
    make_style_transformer,
)
from modelprove.methods.common import TrainsModels, check_same_task, check_sequential_fields, check_t_test_fields
from modelprove.methods.common import dataset_info, fresh_model
from modelprove.methods.base import OwnershipMethod
from modelprove.methods.panel import RECIPES, recipe_data, recipe_training
from modelprove.methods.meta_classifier import MetaClassifier, MetaClassifierConfig
from modelprove.methods.meta_classifier import load_meta_classifier, train_meta_classifier
from modelprove.methods.protection import Protection, create_protection, ensure_writable
from modelprove.models import Classifier, ModelCard, card_for, load_model, predict_proba, save_model
from modelprove.stats import Evidence, PairedTTestRule
from modelprove.training import TrainConfig, agreement, evaluate, train
from modelprove.training.students import DataFreeConfig, data_free_distill, fit_student, frozen
from modelprove.training.gradients import GradientFeatureSpec, gradient_features

METHOD = "move"
ACCESS = (WHITE_BOX, BLACK_BOX)  # the settings MOVE verifies in, preferred first
CONFIDENCE = "confidence"  # the no-meta-classifier ablation's setting (Sec. 7.2.3)

# The black-box augmentations f_i (Sec. 5.3), by name; ``shift`` is the translation in pixels.
AUGMENTATIONS: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "identity": lambda x, shift: x,
    "hflip": lambda x, shift: hflip(x),
    "shift_down_right": lambda x, shift: translate(x, shift, shift),
    "shift_right": lambda x, shift: translate(x, shift, 0),
    "shift_down": lambda x, shift: translate(x, 0, shift),
}
# The defender's surrogates (MoveConfig.surrogates), named as the extraction attacks they stand for, and
# how each learns from its teacher (training.students).
SURROGATE_KINDS = {"distill": "distill", "label_query": "label", "logit_query": "logits", "data_free": "data_free"}
# Settings a verifier may change without re-protecting (the rest define the protection).
VERIFY_OPTIONS = ("m", "m_black_box", "alpha", "meta_classifier", "verification_images", "margin",
                  "sequential", "sequential_batch", "sequential_clear", "corroborate")


@dataclass
class MoveConfig(TrainsModels):
    """MOVE's parameters; defaults follow the paper where it states them (gamma 10%, m 10, alpha 0.01)."""

    arch: str = "cnn_small"
    transformation_rate: float = 0.1  # gamma
    transformer: str = "magenta"  # T, by name in data.style.STYLE_TRANSFORMERS
    style_image: str = "scream"  # a path, or the name of a bundled image
    tile_scale: float = 2.0  # see MagentaStyleTransformer
    feature: Literal["sign", "gradient"] = "sign"  # the paper's ablation (Sec. 7.2.2): sign beats raw
    # Per-sample gradient reduction (training.gradients). The public reference's per-weight layout
    # ("spatial_max") lets C tell models apart by the order of their hidden units, and it accused
    # every independent model we trained (docs/results/move-false-accusations.md); the per-layer
    # sign statistics did not.
    reduction: str = "layer_sign_stats"
    meta_fraction: float = 0.5  # share of transformed images that train C; the rest are for verification
    meta_samples: int = 1000  # at most this many transformed images train C (bounds memory and time)
    meta_hidden: int = 64
    meta_epochs: int = 20
    m: int = 10  # transformed images per verification (the paper's white-box m)
    alpha: float = 0.01
    epochs: int = 8
    batch_size: int = 128
    lr: float = 0.05
    augmentation: str = "crop"
    seed: int = 0
    benign_seed: int | None = None  # seed of B's training; None: the same seed as V (see protect docstring)
    # Benign models whose features are C's negatives (the paper: 1, B itself). More negatives keep C's
    # output near 0 on models it never saw (docs/results/move-false-accusations.md).
    benign_models: int = 5
    # How C's negatives after B are trained, taken in turn (names from methods.panel.RECIPES, or "victim":
    # the victim's own recipe; empty: all the victim's). A white-box C whose negatives share one recipe
    # learns the recipe: honest models trained otherwise (Adam, no augmentation) then score like copies,
    # and the protection fails its self-test against the null panel. The defaults are recipes the null
    # panel does not use (methods.panel.PANEL_RECIPES), so the panel still shows how C treats recipes it
    # never saw.
    negative_recipes: str = "adam-crop,sgd-none,victim,victim"
    # Which of those negatives the black-box C learns from (empty: all). The victim's recipe only, as in
    # the paper (B): with the other recipes among its negatives the black-box C put the panel's honest
    # models in a narrow band that an honest model of a recipe neither had seen fell outside of.
    negative_recipes_black_box: str = "victim"
    # Hold B, the t-test's reference, out of C's training (C's negatives are then benign_models
    # other seeds). Off by default, measured: it did not remove black-box MOVE's false accusation of
    # the demo's independent model (p 2.5e-4 with B in C's training, 4.3e-4 held out), and because B
    # shares V's seed, a C that never saw B can score it V-like (tiny-task copies then went undetected).
    hold_out_reference: bool = False
    # What the benign models (B and C's negatives) and the null panel train on. The paper's B trains on all of
    # D, so it has seen the originals x of the transformed images x' that C is fitted and verified on, while
    # the victim has seen x' but not x, and an honest suspect (trained on other data) neither: C then learns
    # "which of x, x' did this model see", and honest models that saw neither land between the two classes
    # (three of twelve independent cnn_smalls accused white-box on move-fmnist). "D_b" (default): benign
    # models and the panel never train on D_s, so the only difference C can learn is D_t. "D": the paper's.
    benign_data: Literal["D", "D_b"] = "D_b"
    # Surrogate-aware meta-classifier (issue 15; not in the paper). With the victim as its only positive
    # model, C can learn only that model's identity: students trained from scratch on the victim's answers
    # (distillation, label-only or data-free extraction) then score like benign models (C's output 0.000 on
    # the benchmark). Here C's positives are the victim and ``surrogate_seeds`` defender-made students of it
    # for each kind in ``surrogates`` (distill, label_query, logit_query, data_free), and — with
    # ``surrogate_negatives`` — its negatives are the benign models plus students of them made the same
    # way, so that C cannot separate the two by what every student shares (being distilled), only by what
    # the victim's students inherit from it. The students learn from ``surrogate_holdout`` of the defender's
    # data, which the victim and benign models never train on: a thief's data is not the victim's training
    # data either. Empty: the paper's C.
    surrogates: str = ""
    surrogate_seeds: int = 2
    surrogate_holdout: float = 0.2
    surrogate_epochs: int = 10
    surrogate_iterations: int = 100  # a data-free student's DFAD generator steps
    surrogate_negatives: bool = True
    # White-box verification of suspects of other architectures (MOVE Sec. 5.3: the defender trains a copy
    # of the suspect's structure on the victim's training set): comma-separated architectures, each with a
    # victim copy, benign models, (surrogates,) and a meta-classifier of its own; the null panel then holds
    # honest models of each. A white-box suspect of an architecture not listed is inconclusive white-box.
    architectures: str = ""
    # Black-box setting (Sec. 5.3): the augmentations f_1..f_N (comma-separated names from
    # AUGMENTATIONS), the shift of the translations in pixels, and m (the paper: 100).
    augmentations: str = "identity,hflip,shift_down_right,shift_right,shift_down"
    shift: int = 3
    m_black_box: int = 100
    # Ablations (Sec. 7.2.3, 7.4.1), switchable at verification: without the meta-classifier, compare
    # the suspect's and B's confidence on the true label directly; transformed images made from the
    # defender's training images ("train") or from held-out test images ("test").
    meta_classifier: bool = True
    verification_images: Literal["train", "test"] = "train"
    test_transformed: int = 300  # held-out test images style-transferred at protection time
    # Not in the paper: H0 becomes mu_S - mu_B <= margin. The paper's test (margin 0) turns any small,
    # consistent offset of an independent model into significance as m grows (black-box p 0.011 ->
    # 1.1e-6 for m 25 -> 200, docs/results/move-ablations.md); a margin asks for a practically large
    # effect. Switchable at verification; the benchmark reports both rules.
    margin: float = 0.0

    # Not in the paper: verification asked sequentially (OwnershipMethod.verify_rules): the m images are
    # queried ``sequential_batch`` at a time and stop as soon as the rule's answer is certain. The null-
    # panel rule (stats.sequential.SequentialPanelRule): the suspect's mean over the pool above or below
    # the panel's prediction bound at alpha/4 each, undecided -> the fixed rule at alpha/2. The paper's
    # test: delta_mu above ``margin`` (stolen) or below ``sequential_clear`` (cleared) at alpha/2 each,
    # undecided -> the paired t-test at alpha/2. The competence check is sequential then too (10 clean
    # images at a time, methods.base.COMPETENCE_ALPHA). Off by default: the fixed-m test reproduces the
    # paper's tables; `modelprove bench move-sequential` measures both designs on the benchmark's models.
    sequential: bool = False
    sequential_batch: int = 4
    sequential_clear: float = 0.3
    # Not in the paper: under the null-panel rule a white-box "stolen" stands only if the same suspect's
    # black-box evidence (measured through its weights, no query) is stolen too — an intersection-union test,
    # still at most alpha. The white-box meta-classifier alone accused an honest cnn_small of an unseen recipe
    # (C output 0.53 against a panel at 0.04 ± 0.05, black-box 0.08 within its panel; docs/results/move-fmnist.md).
    corroborate: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.transformation_rate < 1.0:
            raise ModelproveError(f"transformation_rate (gamma) must be in (0, 1), got {self.transformation_rate}.")
        if self.feature not in ("sign", "gradient"):
            raise ModelproveError(f"feature must be 'sign' or 'gradient', got {self.feature!r}.")
        if not 0.0 < self.meta_fraction < 1.0:
            raise ModelproveError(f"meta_fraction must be in (0, 1), got {self.meta_fraction}.")
        check_t_test_fields(self)
        check_sequential_fields(self)
        if self.benign_models < 1:
            raise ModelproveError(f"benign_models must be at least 1, got {self.benign_models}.")
        unknown = [r for r in self.negative_recipe_list() + self.black_box_recipe_list() if r != "victim" and r not in RECIPES]
        if unknown:
            raise ModelproveError(f"negative_recipes: unknown recipe {unknown[0]!r}.",
                                  fix=f"use comma-separated names from victim, {', '.join(RECIPES)}.")
        from modelprove.models import ARCHITECTURES

        unknown = [a for a in self.architecture_list() if a not in ARCHITECTURES]
        if unknown:
            raise ModelproveError(f"architectures: unknown architecture {unknown[0]!r}.",
                                  fix=f"use comma-separated names from {', '.join(ARCHITECTURES)}.")
        unknown = [k for k in self.surrogate_list() if k not in SURROGATE_KINDS]
        if unknown:
            raise ModelproveError(f"surrogates: unknown student kind {unknown[0]!r}.",
                                  fix=f"use comma-separated names from {', '.join(SURROGATE_KINDS)} (or leave it empty).")
        if self.surrogate_list() and not (self.surrogate_seeds >= 1 and 0.0 < self.surrogate_holdout < 1.0
                                          and self.surrogate_epochs >= 1 and self.surrogate_iterations >= 1):
            raise ModelproveError("surrogates need surrogate_seeds >= 1, surrogate_holdout in (0, 1), and "
                                  "surrogate_epochs, surrogate_iterations >= 1.",
                                  fix="e.g. --set surrogate_seeds=2 --set surrogate_holdout=0.2.")
        if self.benign_data not in ("D", "D_b"):
            raise ModelproveError(f"benign_data must be 'D' (the paper's) or 'D_b', got {self.benign_data!r}.")
        if self.verification_images not in ("train", "test"):
            raise ModelproveError(f"verification_images must be 'train' or 'test', got {self.verification_images!r}.")
        if self.shift < 1:
            raise ModelproveError(f"shift must be at least 1 pixel, got {self.shift}.")
        if not 0.0 <= self.margin < 1.0:
            raise ModelproveError(f"margin must be in [0, 1) (a difference of probabilities), got {self.margin}.")
        self.augmentation_list()
        self.feature_spec()  # validates the reduction and its combination with the feature

    def negative_recipe_list(self) -> list[str]:
        return [r.strip() for r in self.negative_recipes.split(",") if r.strip()] or ["victim"]

    def architecture_list(self) -> list[str]:
        """The white-box architectures beyond the victim's own."""
        return [a for a in dict.fromkeys(a.strip() for a in self.architectures.split(",") if a.strip()) if a != self.arch]

    def surrogate_list(self) -> list[str]:
        return list(dict.fromkeys(k.strip() for k in self.surrogates.split(",") if k.strip()))

    def black_box_recipe_list(self) -> list[str]:
        return [r.strip() for r in self.negative_recipes_black_box.split(",") if r.strip()]

    def augmentation_list(self) -> list[str]:
        names = [name.strip() for name in self.augmentations.split(",") if name.strip()]
        unknown = [name for name in names if name not in AUGMENTATIONS]
        if not names or unknown:
            raise ModelproveError(
                f"augmentations must be comma-separated names from {', '.join(AUGMENTATIONS)}; got {self.augmentations!r}."
            )
        return names

    def feature_spec(self) -> GradientFeatureSpec:
        return GradientFeatureSpec(self.reduction, signed=self.feature == "sign")  # type: ignore[arg-type]


@dataclass
class MoveProtection:
    """What :func:`protect` made (also written to the protection directory)."""

    directory: Path
    victim: Classifier
    benign: Classifier
    results: dict = field(default_factory=dict)


def transform_images(data: ImageDataset, transformer: StyleTransformer, name: str,
                     description: str = "style transfer") -> ImageDataset:
    """x' = T(x, x_style) for every image of ``data`` (labels and indices kept), as uint8."""
    transformed = []
    with task(description, len(data)) as bar:
        for start in range(0, len(data), 512):
            batch = data.as_float(torch.arange(start, min(start + 512, len(data))))
            transformed.append((transformer(batch) * 255).round().clamp(0, 255).to(torch.uint8))
            bar.advance(len(batch))
    return data.with_images(torch.cat(transformed), name=name)


def embed_external_features(
    defender: ImageDataset, transformer: StyleTransformer, rate: float, seed: int
) -> tuple[ImageDataset, ImageDataset, ImageDataset, ImageDataset]:
    """Split D into D_b and D_s (a fraction ``rate``) and style-transfer D_s into D_t (Eq. 4).

    Returns (D_b, D_s, D_t, D_b ∪ D_t); D_t keeps D_s's labels and indices, row for row.
    """
    count = max(2, round(rate * len(defender)))
    order = torch.randperm(len(defender), generator=generator(seed))
    chosen, rest = order[:count].sort().values, order[count:].sort().values
    d_s = defender.subset(chosen, name=f"{defender.name}[D_s]")
    d_t = transform_images(d_s, transformer, name=f"{defender.name}[D_t]")
    d_b = defender.subset(rest, name=f"{defender.name}[D_b]")
    return d_b, d_s, d_t, ImageDataset.concat([d_b, d_t], name=f"{defender.name}[D_b+D_t]")


def black_box_features(
    predict: Callable[[torch.Tensor], torch.Tensor], originals: torch.Tensor, transformed: torch.Tensor,
    config: MoveConfig,
) -> torch.Tensor:
    """A_M(x, x') = CAT_i [M(f_i(x')) − M(x)] (Eq. 7), shape (n, K·N); floats in [0, 1] in.

    One call of ``predict`` sends x and every f_i(x'): n·(1 + N) queries.
    """
    n = len(originals)
    views = [AUGMENTATIONS[name](transformed, config.shift) for name in config.augmentation_list()]
    outputs = predict(torch.cat([originals, *views]))
    base = outputs[:n]
    return torch.cat([outputs[(i + 1) * n : (i + 2) * n] - base for i in range(len(views))], dim=1)


def _features(model: Classifier, images: torch.Tensor, labels: torch.Tensor, config: MoveConfig) -> torch.Tensor:
    """g_M(x') for uint8 images (Eq. 5)."""
    return gradient_features(model, images.float().div(255), labels, config.feature_spec())


@dataclass
class BenignModels:
    """B (the paper test's reference) and C's negatives (B among them unless ``hold_out_reference``)."""

    benign: Classifier
    record: Any
    negatives: list[Classifier]
    seeds: list[int]  # of the negatives
    recipes: list[str]  # of the negatives after B ("victim": the victim's own recipe)


def train_benign_models(arch: str, defender: ImageDataset, config: MoveConfig, benign_seed: int) -> BenignModels:
    """B, trained like the victim on the clean data, and ``benign_models`` negatives for C. Several benign
    models (another seed and recipe each) show C more than one model without the external feature, so it
    cannot separate V from benign models by one model's particular weights or by a training recipe."""
    benign = fresh_model(arch, defender, benign_seed)
    record = train(benign, defender, config.train_config(benign_seed), description=f"benign model ({arch}, D)")
    negatives = [] if config.hold_out_reference else [benign]
    seeds = [] if config.hold_out_reference else [benign_seed]
    names: list[str] = []
    # With B held out, the first negative takes B's place: the victim's recipe, with a seed of its own.
    recipes = (["victim"] if config.hold_out_reference else []) + config.negative_recipe_list()
    extra = 0
    while len(negatives) < config.benign_models:
        extra += 1
        seed = benign_seed + 7919 * extra
        name = recipes[(extra - 1) % len(recipes)]
        if name == "victim":
            data, training = defender, config.train_config(seed)
        else:
            recipe = RECIPES[name]
            data, training = recipe_data(recipe, defender, seed), recipe_training(recipe, config.epochs, config.batch_size, seed)
        negatives.append(fresh_model(arch, defender, seed))
        seeds.append(seed)
        names.append(name)
        train(negatives[-1], data, training, description=f"benign model {extra + 1} ({arch}, D, {name})")
    return BenignModels(benign, record, negatives, seeds, names)


def fit_architecture(arch: str, victim: Classifier, negatives: list[Classifier], watermarked: ImageDataset,
                     defender: ImageDataset, held: ImageDataset | None, d_t: ImageDataset, meta_rows: torch.Tensor,
                     test: ImageDataset, config: MoveConfig, benign_seed: int) -> dict[str, Any]:
    """White-box MOVE in another architecture (Sec. 5.3: "the defender can train a copy of the suspicious
    model's structure on the victim's training set"): a victim copy of ``arch`` trained on the same
    D_b ∪ D_t, benign models of ``arch`` on D, the victim's students in ``arch`` (with students of the
    benign ``negatives`` as negatives), and a C of its own on the same transformed images."""
    copy = fresh_model(arch, watermarked, config.seed)
    copy_record = train(copy, watermarked, config.train_config(config.seed), description=f"victim ({arch}, D_b ∪ D_t)")
    benigns = train_benign_models(arch, defender, config, benign_seed)  # ``defender``: the benign models' data
    students = train_surrogates(victim, negatives, held, config, arch=arch) if held is not None else Surrogates()
    images, labels = d_t.images[meta_rows], d_t.labels[meta_rows]
    meta, meta_record = train_meta_classifier(
        torch.cat([_features(v, images, labels, config) for v in [copy, *students.positives]]),
        torch.cat([_features(b, images, labels, config) for b in [*benigns.negatives, *students.negatives]]),
        MetaClassifierConfig(hidden=config.meta_hidden, epochs=config.meta_epochs, seed=config.seed))
    return {"victim": copy, "victim_record": copy_record, "benign": benigns, "meta": meta,
            "results": {"victim_test_accuracy": evaluate(copy, test), "benign_test_accuracy": evaluate(benigns.benign, test),
                        "victim_accuracy_on_transformed": evaluate(copy, d_t),
                        "benign_accuracy_on_transformed": evaluate(benigns.benign, d_t),
                        "meta_classifier": meta_record, "surrogates": students.record,
                        "meta_classifier_negative_recipes": benigns.recipes}}


def write_architecture(path: Callable[[str], Path], arch: str, extra: dict[str, Any], defender: ImageDataset) -> None:
    """``fit_architecture``'s victim copy, B and C as ``victim-ARCH``, ``benign-ARCH``, ``meta_classifier-ARCH``."""
    for role, model, record in (("victim", extra["victim"], extra["victim_record"]),
                                ("benign", extra["benign"].benign, extra["benign"].record)):
        training = {"dataset": defender.name, "test_accuracy": extra["results"][f"{role}_test_accuracy"],
                    **record.to_dict()}
        save_model(model, card_for(model, defender.classes, training,
                                   {"kind": role, "method": METHOD, "white_box_architecture": arch}),
                   path(f"{role}-{arch}.safetensors"))
    save_file({k: v.contiguous() for k, v in extra["meta"].state_dict().items()}, str(path(f"meta_classifier-{arch}.safetensors")))


def split_pool(d_t: ImageDataset, config: MoveConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of D_t that train C, and the rest: the verification pool (split once, seeded)."""
    order = torch.randperm(len(d_t), generator=generator(config.seed + 1))
    n_meta = min(config.meta_samples, max(1, round(config.meta_fraction * len(d_t))))
    return order[:n_meta], order[n_meta:]


def hold_back(defender: ImageDataset, config: MoveConfig) -> tuple[ImageDataset, ImageDataset | None]:
    """(the defender data the victim and benign models train on, the share only surrogates learn from)."""
    if not config.surrogate_list():
        return defender, None
    order = torch.randperm(len(defender), generator=generator(config.seed + 5))
    count = min(len(defender) - 2, max(2, round(config.surrogate_holdout * len(defender))))
    return (defender.subset(order[count:].sort().values, name=f"{defender.name}[victim and benign]"),
            defender.subset(order[:count].sort().values, name=f"{defender.name}[surrogates]"))


@dataclass
class Surrogates:
    """The defender's students: of the victim (C's extra positives) and of benign models (extra negatives;
    ``negative_teachers`` indexes the teacher of each among the negatives)."""

    positives: list[Classifier] = field(default_factory=list)
    negatives: list[Classifier] = field(default_factory=list)
    negative_teachers: list[int] = field(default_factory=list)
    record: list[dict] = field(default_factory=list)


def train_surrogates(victim: Classifier, negatives: list[Classifier], held: ImageDataset, config: MoveConfig,
                     arch: str | None = None) -> Surrogates:
    """``surrogate_seeds`` students of the victim per kind of ``config.surrogates``, trained from scratch on
    its answers for the held-back data (training.students: the extraction attacks' own code), and as many
    students of the benign models (taken in turn), made the same way with the same seeds; students are of
    ``arch`` (default: the victim's), as a thief may steal into another architecture."""
    made = Surrogates()
    for k, kind in enumerate(config.surrogate_list()):
        for i in range(config.surrogate_seeds):
            seed = config.seed + 104729 * (i + 1) + 1009 * k
            teachers = [(None, victim)]
            if config.surrogate_negatives:  # the same count of students on either side, seed for seed
                teachers.append((i % len(negatives), negatives[i % len(negatives)]))
            for index, teacher in teachers:
                name = "victim" if index is None else f"benign model {index}"
                start = time.perf_counter()
                student = fresh_model(arch or config.arch, held, seed)
                description = f"surrogate ({kind}, {student.arch}) of the {name}, seed {seed}"
                if kind == "data_free":
                    with frozen(teacher):
                        data_free_distill(student, teacher, held.input_shape,
                                          DataFreeConfig(iterations=config.surrogate_iterations, seed=seed),
                                          description=description)
                else:
                    training = TrainConfig(epochs=config.surrogate_epochs, batch_size=config.batch_size, lr=config.lr,
                                           augmentation=config.augmentation, seed=seed)
                    fit_student(student, held, predict_proba(teacher, held.as_float()), SURROGATE_KINDS[kind],
                                training, description=description)
                student.eval()
                if index is None:
                    made.positives.append(student)
                else:
                    made.negatives.append(student)
                    made.negative_teachers.append(index)
                made.record.append({"kind": kind, "arch": student.arch, "teacher": name, "seed": seed,
                                    "seconds": round(time.perf_counter() - start, 2),
                                    "fidelity_on_held_back": round(agreement(student, teacher, held), 4)})
    return made


def build(
    defender: ImageDataset,
    test: ImageDataset,
    out: str | Path,
    config: MoveConfig | None = None,
    *,
    transformer: StyleTransformer | None = None,
    force: bool = False,
) -> MoveProtection:
    """Write MOVE's own protection of a new victim trained on ``defender`` data to ``out`` (no null
    panel: :func:`protect`, the registry's, adds it).

    B is trained with V's seed by default (``benign_seed=None``: the same initialisation and data
    order). C's negatives are ``benign_models`` further benign models with other seeds, and B too
    when ``hold_out_reference`` is off (the paper's setting).
    """
    config = config or MoveConfig()
    check_same_task(defender, test)
    out = Path(out)
    ensure_writable(out, force)
    transformer = transformer or make_style_transformer(
        config.transformer, style_image=config.style_image, tile_scale=config.tile_scale
    )
    timings: dict[str, float] = {}
    given = defender
    defender, held = hold_back(given, config)  # held: only the surrogates learn from it (None: no surrogates)

    start = time.perf_counter()
    d_b, d_s, d_t, watermarked = embed_external_features(defender, transformer, config.transformation_rate, config.seed)
    # Held-out test images, transformed the same way: the Sec. 7.4.1 ablation verifies with these.
    test_rows = torch.randperm(len(test), generator=generator(config.seed + 2))[: config.test_transformed]
    test_originals = test.subset(test_rows.sort().values, name=f"{test.name}[held-out]")
    test_transformed = transform_images(test_originals, transformer, name=f"{test.name}[held-out, transformed]",
                                        description="style transfer (held-out test images)")
    timings["style_transfer"] = time.perf_counter() - start

    def new_model(seed: int) -> Classifier:
        return fresh_model(config.arch, defender, seed)

    benign_seed = config.seed if config.benign_seed is None else config.benign_seed
    start = time.perf_counter()
    victim = new_model(config.seed)
    victim_record = train(victim, watermarked, config.train_config(config.seed), description="victim (D_b ∪ D_t)")
    timings["train_victim"] = time.perf_counter() - start
    start = time.perf_counter()
    clean = d_b if config.benign_data == "D_b" else defender  # what benign models train on (see benign_data)
    benigns = train_benign_models(config.arch, clean, config, benign_seed)
    benign, benign_record, negatives = benigns.benign, benigns.record, benigns.negatives
    negative_seeds, negative_recipes = benigns.seeds, benigns.recipes
    timings[f"train_benign_models_x{len(negatives) + config.hold_out_reference}"] = time.perf_counter() - start
    start = time.perf_counter()
    surrogates = train_surrogates(victim, negatives, held, config) if held is not None else Surrogates()
    timings[f"train_surrogates_x{len(surrogates.positives) + len(surrogates.negatives)}"] = time.perf_counter() - start

    # Transformed images are split once: one part trains C, the other is the verification pool.
    meta_rows, verify_rows = split_pool(d_t, config)
    if len(verify_rows) < config.m:
        raise ModelproveError(
            f"only {len(verify_rows)} transformed images are left for verification but m = {config.m}.",
            fix="raise transformation_rate, lower meta_fraction, or use a larger defender set.",
        )

    start = time.perf_counter()
    meta_images, meta_labels = d_t.images[meta_rows], d_t.labels[meta_rows]
    victim_features = torch.cat([_features(v, meta_images, meta_labels, config)
                                 for v in [victim, *surrogates.positives]])
    benign_features = torch.cat([_features(b, meta_images, meta_labels, config)
                                 for b in [*negatives, *surrogates.negatives]])
    timings["gradient_features"] = time.perf_counter() - start
    meta_config = MetaClassifierConfig(hidden=config.meta_hidden, epochs=config.meta_epochs, seed=config.seed)
    start = time.perf_counter()
    meta, meta_record = train_meta_classifier(victim_features, benign_features, meta_config)
    timings["meta_classifier"] = time.perf_counter() - start

    # White-box in other architectures (MOVE Sec. 5.3: "the defender can train a copy of the suspicious
    # model's structure on the victim's training set"): per architecture, a victim trained on the same
    # D_b ∪ D_t, benign models on D, the victim's students in that architecture, and a C of its own.
    extras: dict[str, dict[str, Any]] = {}
    for arch in config.architecture_list():
        start = time.perf_counter()
        extras[arch] = fit_architecture(arch, victim, negatives, watermarked, clean, held, d_t, meta_rows, test,
                                        config, benign_seed)
        timings[f"architecture_{arch}"] = time.perf_counter() - start

    # Black-box meta-classifier (Eq. 8): the same images and models, probability differences as features.
    start = time.perf_counter()
    meta_originals, meta_transformed = d_s.images[meta_rows].float() / 255, meta_images.float() / 255
    victim_bb = torch.cat([black_box_features(lambda x, v=v: predict_proba(v, x), meta_originals, meta_transformed, config)
                           for v in [victim, *surrogates.positives]])
    recipes_of = (["victim"] if not config.hold_out_reference else []) + negative_recipes
    wanted = config.black_box_recipe_list()
    black_box_negatives = [b for b, r in zip(negatives, recipes_of) if not wanted or r in wanted]
    black_box_negatives += [s for s, t in zip(surrogates.negatives, surrogates.negative_teachers)
                            if not wanted or recipes_of[t] in wanted]
    if not black_box_negatives:
        raise ModelproveError(f"negative_recipes_black_box ({config.negative_recipes_black_box!r}) selects none of "
                              f"C's negatives (recipes {', '.join(recipes_of)}).",
                              fix="name a recipe of negative_recipes (or victim), or leave it empty.")
    benign_bb = torch.cat([
        black_box_features(lambda x, b=b: predict_proba(b, x), meta_originals, meta_transformed, config)
        for b in black_box_negatives
    ])
    meta_bb, meta_bb_record = train_meta_classifier(victim_bb, benign_bb, meta_config)
    timings["meta_classifier_black_box"] = time.perf_counter() - start

    victim_accuracy, benign_accuracy = evaluate(victim, test), evaluate(benign, test)
    results = {
        "victim_test_accuracy": victim_accuracy,
        "benign_test_accuracy": benign_accuracy,
        "victim_accuracy_on_transformed": evaluate(victim, d_t),
        "benign_accuracy_on_transformed": evaluate(benign, d_t),
        "meta_classifier": meta_record,
        "meta_classifier_black_box": meta_bb_record,
        "reference_seed": benign_seed,  # B, the t-test's reference
        "meta_classifier_negative_seeds": negative_seeds,
        "meta_classifier_negative_recipes": recipes_of,
        "meta_classifier_black_box_negatives": len(black_box_negatives),
        "feature_dimension": int(victim_features.shape[1]),
        "black_box_feature_dimension": int(victim_bb.shape[1]),
        "surrogates": surrogates.record,
        "architectures": {arch: extra["results"] for arch, extra in extras.items()},
        "victim_accuracy_on_held_out_transformed": evaluate(victim, test_transformed),
        "benign_accuracy_on_held_out_transformed": evaluate(benign, test_transformed),
        "seconds": {k: round(v, 2) for k, v in timings.items()},
    }
    data_record = dataset_info(given, test, transformed=len(d_t), verification_pool=len(verify_rows),
                               held_out_transformed=len(test_transformed),
                               surrogate_holdout=0 if held is None else len(held),
                               defender_fingerprint=given.fingerprint())
    full_config = {**asdict(config), "transformer_used": _describe(transformer), "meta_classifier": asdict(meta_config)}
    with create_protection(out, METHOD, full_config, force=force) as writer:
        training = {"dataset": defender.name, "test_accuracy": victim_accuracy, **victim_record.to_dict()}
        save_model(victim, card_for(victim, defender.classes, training, {"kind": "victim", "method": METHOD}),
                   writer.path("victim.safetensors"))
        training = {"dataset": defender.name, "test_accuracy": benign_accuracy, **benign_record.to_dict()}
        save_model(benign, card_for(benign, defender.classes, training, {"kind": "benign", "method": METHOD}),
                   writer.path("benign.safetensors"))
        save_file({k: v.contiguous() for k, v in meta.state_dict().items()}, str(writer.path("meta_classifier.safetensors")))
        for arch, extra in extras.items():
            write_architecture(writer.path, arch, extra, defender)
        for i, negative in enumerate(negatives[0 if config.hold_out_reference else 1:], start=1):
            # Teachers of the benign students an extension (extend) trains in another architecture.
            save_model(negative, card_for(negative, defender.classes, {"dataset": defender.name},
                                          {"kind": "benign", "method": METHOD, "meta_classifier_negative": i}),
                       writer.path(f"negative-{i}.safetensors"))
        save_file({k: v.contiguous() for k, v in meta_bb.state_dict().items()},
                  str(writer.path("meta_classifier_black_box.safetensors")))
        save_file(
            {
                "images": d_t.images.contiguous(),
                "originals": d_s.images.contiguous(),  # x for A_M(x, x'), row for row with "images"
                "labels": d_t.labels.contiguous(),
                "indices": d_t.indices.contiguous(),
                "role": torch.isin(torch.arange(len(d_t)), verify_rows).to(torch.uint8),  # 1: verification pool
                "test_images": test_transformed.images.contiguous(),
                "test_originals": test_originals.images.contiguous(),
                "test_labels": test_transformed.labels.contiguous(),
            },
            str(writer.path("transformed.safetensors")),
        )
        style_source = getattr(transformer, "style_image", None)
        if style_source is not None:  # the owner's secret x_style, kept with the protection
            style_path = Path(str(style_source))
            if not style_path.is_file() and str(style_source) in bundled_style_names():
                style_path = bundled_style_path(str(style_source))
            if style_path.is_file():
                atomic_write_bytes(writer.path("style" + style_path.suffix.lower()), style_path.read_bytes())
            else:
                _save_png(load_style_image(str(style_source)), writer.path("style.png"))
        writer.record(dataset=data_record, results=results, access=ACCESS)
    return MoveProtection(directory=out, victim=victim, benign=benign, results=results)


def _save_png(rgb, path: Path) -> None:
    from PIL import Image

    Image.fromarray(rgb).save(path)


def _describe(transformer: StyleTransformer) -> dict:
    describe = getattr(transformer, "describe", None)
    return describe() if callable(describe) else {"transformer": getattr(transformer, "name", type(transformer).__name__)}


def check_suspect(victim_card: ModelCard, suspect: Classifier, suspect_path: str | Path) -> None:
    """White-box MOVE compares gradients weight by weight: the suspect must share V's architecture."""
    expected = (victim_card.arch, victim_card.num_classes, list(victim_card.input_shape))
    found = (suspect.arch, suspect.num_classes, [suspect.in_channels, *suspect.input_size])
    if expected != found:
        raise SuspectError(
            f"white-box MOVE needs the victim's architecture, classes and input shape "
            f"(arch={expected[0]}, classes={expected[1]}, input={expected[2]}), but the suspect has "
            f"arch={found[0]}, classes={found[1]}, input={found[2]}.",
            path=suspect_path,
            fix="retrain a copy of the victim in the suspect's architecture (MOVE Sec. 5.3), or verify black-box "
                "(--access black-box).",
        )


@dataclass
class VerificationPool:
    """Transformed images x', their benign originals x (both uint8) and true labels y."""

    images: torch.Tensor
    originals: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class OpenedMove:
    """A MOVE protection loaded for verification."""

    protection: Protection
    victim_card: ModelCard
    benign: Classifier
    meta: MetaClassifier
    meta_black_box: MetaClassifier
    pool: VerificationPool  # from the defender's training images, disjoint from C's training images
    held_out_pool: VerificationPool  # from held-out test images (Sec. 7.4.1)
    config: MoveConfig
    # Other white-box architectures: arch -> (its C, its B) (MoveConfig.architectures)
    white_box: dict[str, tuple[MetaClassifier, Classifier]] = field(default_factory=dict)

    def white_box_for(self, arch: str | None) -> tuple[MetaClassifier, Classifier, str] | None:
        """(C, B, the evidence variant's prefix) for a white-box suspect of ``arch``; None: not verifiable."""
        if arch == self.victim_card.arch:
            return self.meta, self.benign, WHITE_BOX
        if arch in self.white_box:
            return (*self.white_box[arch], f"{WHITE_BOX}@{arch}")
        return None

    @property
    def pool_images(self) -> torch.Tensor:
        return self.pool.images

    def pool_for(self, which: str) -> VerificationPool:
        return self.held_out_pool if which == "test" else self.pool


def open_protection(directory: str | Path | Protection) -> OpenedMove:
    """Load a MOVE protection for verification (a path is opened and hash-checked first)."""
    protection = Protection.open_for(directory, METHOD)
    directory = protection.directory
    missing = [name for name in ("meta_classifier_black_box.safetensors",) if name not in protection.manifest["files"]]
    if missing:
        raise ProtectionError(
            f"this MOVE protection has no {', '.join(missing)}: it was made before black-box verification existed.",
            path=directory,
            fix="protect again with this version of modelprove.",
        )
    config = protection.config_as(MoveConfig)
    _, victim_card = load_model(protection.path("victim.safetensors"))
    benign, _ = load_model(protection.path("benign.safetensors"))
    transformed = load_file(str(protection.path("transformed.safetensors")))
    pool = transformed["role"].bool()
    return OpenedMove(
        protection=protection,
        victim_card=victim_card,
        benign=benign,
        meta=load_meta_classifier(protection, "meta_classifier.safetensors"),
        meta_black_box=load_meta_classifier(protection, "meta_classifier_black_box.safetensors"),
        pool=VerificationPool(transformed["images"][pool], transformed["originals"][pool], transformed["labels"][pool]),
        held_out_pool=VerificationPool(transformed["test_images"], transformed["test_originals"],
                                       transformed["test_labels"]),
        config=config,
        white_box={arch: (load_meta_classifier(protection, f"meta_classifier-{arch}.safetensors"),
                          load_model(protection.path(f"benign-{arch}.safetensors"))[0])
                   for arch in config.architecture_list()},
    )


class Move(OwnershipMethod):
    """MOVE's evidence: C's mean output on the suspect's features of m transformed images (Sec. 5.4)."""

    name = METHOD
    access = ACCESS
    config = MoveConfig
    description = ("MOVE: style-transfer external features; meta-classifier on gradient signs (white-box) or "
                   "on probability differences under augmentations (black-box) (Li et al. 2022)")
    verify_options = VERIFY_OPTIONS
    corroborated_by = {WHITE_BOX: BLACK_BOX}

    def build(self, defender, test, out, config, *, force=False, **inputs):
        return build(defender, test, out, config, force=force, **inputs)

    def open(self, directory):
        return open_protection(directory)

    def pool_size(self, opened: OpenedMove, config: MoveConfig, setting: str) -> int:
        return len(opened.pool_for(config.verification_images))

    def variant(self, config: MoveConfig, setting: str) -> str:
        return f"{setting if config.meta_classifier else CONFIDENCE}/{config.verification_images}"

    def calibration_variants(self, config: MoveConfig) -> list[tuple[str, MoveConfig]]:
        return [(setting, replace(config, meta_classifier=meta, verification_images=images))
                for images in ("train", "test") for setting, meta in
                ((WHITE_BOX, True), (BLACK_BOX, True), (BLACK_BOX, False))]

    def scorable(self, opened: OpenedMove, arch: str | None, setting: str) -> str | None:
        if setting == WHITE_BOX and opened.config.meta_classifier and opened.white_box_for(arch) is None:
            fitted = ", ".join([opened.victim_card.arch, *opened.white_box])
            return (f"white-box MOVE compares gradients weight by weight with a meta-classifier fitted to one "
                    f"architecture ({fitted}); the suspect is {arch} (protect with --set architectures={arch}, MOVE "
                    f"Sec. 5.3, or verify black-box).")
        return None

    def protected_models(self, opened: OpenedMove, setting: str, victim: Classifier) -> list[Classifier]:
        if setting != WHITE_BOX:
            return [victim]
        return [victim, *(load_model(opened.protection.path(f"victim-{arch}.safetensors"))[0]
                          for arch in opened.white_box)]

    def panel_exclusions(self, opened: OpenedMove) -> torch.Tensor | None:
        """With benign_data=D_b the panel, like C's negatives, never trains on D_s (the transformed images'
        originals): honest models of other owners have not seen them either."""
        if opened.config.benign_data != "D_b":
            return None
        return load_file(str(opened.protection.path("transformed.safetensors")))["indices"]

    def panel_architectures(self, config: MoveConfig) -> tuple[str, ...]:
        return tuple(config.architecture_list())

    extendable = ("architectures",)

    def build_extension(self, opened: OpenedMove, defender: ImageDataset, test: ImageDataset, staged: Path,
                        changes: dict[str, str]) -> dict:
        """White-box MOVE in more architectures for an existing protection (issue 15 item 2): each trained on the
        victim's own training set — the stored D_t and the rest of the same defender data — with the victim,
        B, the negatives and the meta-classifiers kept as they are."""
        config = opened.config
        asked = [a.strip() for a in changes["architectures"].split(",") if a.strip()]
        new = [a for a in dict.fromkeys(asked) if a != config.arch and a not in config.architecture_list()]
        if not new:
            raise ModelproveError(f"this protection already verifies white-box in {', '.join(asked) or 'nothing new'} "
                                  f"({', '.join([config.arch, *config.architecture_list()])}).",
                                  fix="name an architecture it does not have yet in --set architectures=...")
        extended = replace(config, architectures=",".join([*config.architecture_list(), *new]))  # validates the names
        manifest = opened.protection.manifest
        if manifest["dataset"].get("defender_fingerprint") != defender.fingerprint():
            raise ProtectionError("the defender data given is not the data this protection was made from (its "
                                  "fingerprint differs), so the victim's training set cannot be rebuilt.",
                                  path=opened.protection.directory,
                                  fix="pass the --data, --data-dir, --attacker-fraction and --defender-limit that "
                                      "protect was given (the protection's seed is used for the split).")
        part, held = hold_back(defender, config)
        stored = load_file(str(staged / "transformed.safetensors"))
        d_t = ImageDataset(stored["images"], stored["labels"], list(part.classes), f"{part.name}[D_t]", stored["indices"])
        rest = part.subset(torch.nonzero(~torch.isin(part.indices, stored["indices"])).squeeze(1), name=f"{part.name}[D_b]")
        watermarked = ImageDataset.concat([rest, d_t], name=f"{part.name}[D_b+D_t]")
        meta_rows, _ = split_pool(d_t, config)
        victim, _ = load_model(staged / "victim.safetensors")
        negatives = [] if config.hold_out_reference else [opened.benign]
        negatives += [load_model(staged / f"negative-{i}.safetensors")[0]
                      for i in range(1, 1 + sum(name.startswith("negative-") and name.endswith(".safetensors")
                                                for name in manifest["files"]))]
        benign_seed = config.seed if config.benign_seed is None else config.benign_seed
        results = dict(manifest["results"])
        archs = dict(results.get("architectures", {}))
        seconds = dict(results.get("seconds", {}))
        for arch in new:
            start = time.perf_counter()
            extra = fit_architecture(arch, victim, negatives, watermarked, rest if config.benign_data == "D_b" else part,
                                     held, d_t, meta_rows, test, config, benign_seed)
            write_architecture(lambda name: staged / name, arch, extra, part)
            archs[arch] = extra["results"]
            seconds[f"architecture_{arch}"] = round(time.perf_counter() - start, 2)
        return {"config": {**manifest["config"], "architectures": extended.architectures},
                "results": {**results, "architectures": archs, "seconds": seconds}}

    def paper_rule(self, opened: OpenedMove, config: MoveConfig) -> PairedTTestRule:
        return PairedTTestRule(margin=config.margin)

    def evidence(self, opened: OpenedMove, suspect: LabelOnlyAccess, setting: str, config: MoveConfig,
                 rows: torch.Tensor | None, *, reference: bool = True) -> Evidence:
        """p_S (and p_B of the benign model B) for the transformed images ``rows`` of the pool (Eq. 9)."""
        pool = opened.pool_for(config.verification_images)
        rows = torch.arange(len(pool)) if rows is None else rows
        images, originals, labels = pool.images[rows].float() / 255, pool.originals[rows].float() / 255, pool.labels[rows]
        p_benign = None
        variant = self.variant(config, setting if config.meta_classifier else BLACK_BOX)
        if not config.meta_classifier:
            # Sec. 7.2.3's ablation: no C, the true-label confidence of S vs B on the same x'.
            setting, statistic = CONFIDENCE, "mean true-label confidence on transformed images"
            p_suspect = suspect.probabilities(images).gather(1, labels.view(-1, 1)).squeeze(1)  # type: ignore[attr-defined]
            if reference:
                p_benign = predict_proba(opened.benign, images).gather(1, labels.view(-1, 1)).squeeze(1)
        elif setting == WHITE_BOX:
            statistic = "mean meta-classifier output on gradient signs"
            spec = config.feature_spec()
            fitted = opened.white_box_for(suspect.arch)
            if fitted is None:
                raise ModelproveError(self.scorable(opened, suspect.arch, setting) or "no meta-classifier fits the suspect.")
            meta, benign, prefix = fitted
            variant = f"{prefix}/{config.verification_images}"
            p_suspect = meta.victim_probability(gradient_features(suspect.model, images, labels, spec))  # type: ignore[attr-defined]
            if reference:
                p_benign = meta.victim_probability(gradient_features(benign, images, labels, spec))
        else:
            statistic = "mean meta-classifier output on probability differences"
            p_suspect = opened.meta_black_box.victim_probability(
                black_box_features(suspect.probabilities, originals, images, config))  # type: ignore[attr-defined]
            if reference:
                p_benign = opened.meta_black_box.victim_probability(
                    black_box_features(lambda x: predict_proba(opened.benign, x), originals, images, config))
        details = {"mu_suspect": float(p_suspect.mean()), "verification_images": config.verification_images}
        if p_benign is not None:
            details["mu_benign"] = float(p_benign.mean())
        return Evidence(METHOD, setting, variant, statistic, p_suspect.numpy(), rows.numpy(),
                        paired=None if p_benign is None else (p_suspect.numpy(), p_benign.numpy()),
                        reference_name="the benign model B", details=details)


MOVE = Move()
protect = MOVE.protect
verify = MOVE.verify
