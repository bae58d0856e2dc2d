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

Transformed images are split once, at protection time, into a part that trains C and a disjoint
verification pool (``meta_fraction``), so the test never scores C on images it was fitted to.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file

from modelprove.core.errors import ModelproveError, ProtectionError, SuspectError
from modelprove.core.fileio import sha256_file
from modelprove.core.progress import task
from modelprove.core.seeding import generator
from modelprove.core.verdict import Verdict
from modelprove.data.dataset import ImageDataset
from modelprove.data.style import StyleTransformer, bundled_style_path, make_style_transformer
from modelprove.methods.meta_classifier import MetaClassifier, MetaClassifierConfig, train_meta_classifier
from modelprove.methods.protection import Protection, create_protection, ensure_writable
from modelprove.models import Classifier, ModelCard, build_model, card_for, load_model, save_model
from modelprove.stats import paired_ttest_greater
from modelprove.training import TrainConfig, evaluate, train
from modelprove.training.gradients import GradientFeatureSpec, gradient_features

METHOD = "move"
ACCESS = "white-box"


@dataclass
class MoveConfig:
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
    # Benign models whose features are C's negatives (the paper: 1); the first is B, the t-test's
    # reference. More negatives keep C's output near 0 on models it never saw (same docs page).
    benign_models: int = 3

    def __post_init__(self) -> None:
        if not 0.0 < self.transformation_rate < 1.0:
            raise ModelproveError(f"transformation_rate (gamma) must be in (0, 1), got {self.transformation_rate}.")
        if self.feature not in ("sign", "gradient"):
            raise ModelproveError(f"feature must be 'sign' or 'gradient', got {self.feature!r}.")
        if not 0.0 < self.meta_fraction < 1.0:
            raise ModelproveError(f"meta_fraction must be in (0, 1), got {self.meta_fraction}.")
        if self.m < 2:
            raise ModelproveError(f"m must be at least 2 for a paired t-test, got {self.m}.")
        if self.benign_models < 1:
            raise ModelproveError(f"benign_models must be at least 1, got {self.benign_models}.")
        if not 0.0 < self.alpha < 1.0:
            raise ModelproveError(f"alpha must be in (0, 1), got {self.alpha}.")
        self.feature_spec()  # validates the reduction and its combination with the feature

    def feature_spec(self) -> GradientFeatureSpec:
        return GradientFeatureSpec(self.reduction, signed=self.feature == "sign")  # type: ignore[arg-type]

    def train_config(self, seed: int) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, augmentation=self.augmentation, seed=seed
        )


@dataclass
class MoveProtection:
    """What :func:`protect` made (also written to the protection directory)."""

    directory: Path
    victim: Classifier
    benign: Classifier
    results: dict = field(default_factory=dict)


def embed_external_features(
    defender: ImageDataset, transformer: StyleTransformer, rate: float, seed: int
) -> tuple[ImageDataset, ImageDataset, ImageDataset]:
    """Split D into D_b and D_s (a fraction ``rate``) and style-transfer D_s into D_t (Eq. 4).

    Returns (D_b, D_t, D_b ∪ D_t); D_t keeps D_s's labels and indices.
    """
    count = max(2, round(rate * len(defender)))
    order = torch.randperm(len(defender), generator=generator(seed))
    chosen, rest = order[:count].sort().values, order[count:].sort().values
    selected = defender.subset(chosen, name=f"{defender.name}[D_s]")
    transformed = []
    with task("style transfer", len(selected)) as bar:
        for start in range(0, len(selected), 512):
            batch = selected.as_float(torch.arange(start, min(start + 512, len(selected))))
            transformed.append((transformer(batch) * 255).round().clamp(0, 255).to(torch.uint8))
            bar.advance(len(batch))
    d_t = selected.with_images(torch.cat(transformed), name=f"{defender.name}[D_t]")
    d_b = defender.subset(rest, name=f"{defender.name}[D_b]")
    return d_b, d_t, ImageDataset.concat([d_b, d_t], name=f"{defender.name}[D_b+D_t]")


def _features(model: Classifier, images: torch.Tensor, labels: torch.Tensor, config: MoveConfig) -> torch.Tensor:
    return gradient_features(model, images.float().div(255), labels, config.feature_spec())


def protect(
    defender: ImageDataset,
    test: ImageDataset,
    out: str | Path,
    config: MoveConfig | None = None,
    *,
    transformer: StyleTransformer | None = None,
    force: bool = False,
) -> MoveProtection:
    """Make a MOVE protection of a new victim trained on ``defender`` data; write it to ``out``.

    B is trained with V's seed by default (``benign_seed=None``: the same initialisation and data
    order); ``benign_models - 1`` further benign models use other seeds.
    """
    config = config or MoveConfig()
    if defender.input_shape != test.input_shape or defender.classes != test.classes:
        raise ModelproveError(
            f"the defender data {defender.name} {defender.input_shape} and test data {test.name} "
            f"{test.input_shape} do not describe the same task."
        )
    out = Path(out)
    ensure_writable(out, force)
    transformer = transformer or make_style_transformer(
        config.transformer, style_image=config.style_image, tile_scale=config.tile_scale
    )
    timings: dict[str, float] = {}

    start = time.perf_counter()
    d_b, d_t, watermarked = embed_external_features(defender, transformer, config.transformation_rate, config.seed)
    timings["style_transfer"] = time.perf_counter() - start

    channels, height, width = defender.input_shape
    sample = defender.as_float(torch.arange(min(len(defender), 10000)))  # normalisation statistics
    mean, std = sample.mean(dim=(0, 2, 3)).tolist(), sample.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()

    def new_model(seed: int) -> Classifier:
        torch.manual_seed(seed)
        return build_model(config.arch, channels, defender.num_classes, (height, width), mean=mean, std=std)

    benign_seed = config.seed if config.benign_seed is None else config.benign_seed
    start = time.perf_counter()
    victim = new_model(config.seed)
    victim_record = train(victim, watermarked, config.train_config(config.seed), description="victim (D_b ∪ D_t)")
    timings["train_victim"] = time.perf_counter() - start
    start = time.perf_counter()
    benign = new_model(benign_seed)
    benign_record = train(benign, defender, config.train_config(benign_seed), description="benign model (D)")
    # Extra benign models (another seed each) show C more than one model without the external
    # feature, so it cannot separate V from B by B's particular weights alone.
    extra_benign = []
    for extra in range(1, config.benign_models):
        seed = benign_seed + 7919 * extra
        extra_benign.append(new_model(seed))
        train(extra_benign[-1], defender, config.train_config(seed), description=f"benign model {extra + 1} (D)")
    timings[f"train_benign_models_x{config.benign_models}"] = time.perf_counter() - start

    # Transformed images are split once: one part trains C, the other is the verification pool.
    order = torch.randperm(len(d_t), generator=generator(config.seed + 1))
    n_meta = min(config.meta_samples, max(1, round(config.meta_fraction * len(d_t))))
    meta_rows, verify_rows = order[:n_meta], order[n_meta:]
    if len(verify_rows) < config.m:
        raise ModelproveError(
            f"only {len(verify_rows)} transformed images are left for verification but m = {config.m}.",
            fix="raise transformation_rate, lower meta_fraction, or use a larger defender set.",
        )

    start = time.perf_counter()
    meta_images, meta_labels = d_t.images[meta_rows], d_t.labels[meta_rows]
    victim_features = _features(victim, meta_images, meta_labels, config)
    benign_features = torch.cat([_features(b, meta_images, meta_labels, config) for b in [benign, *extra_benign]])
    timings["gradient_features"] = time.perf_counter() - start
    meta_config = MetaClassifierConfig(hidden=config.meta_hidden, epochs=config.meta_epochs, seed=config.seed)
    start = time.perf_counter()
    meta, meta_record = train_meta_classifier(victim_features, benign_features, meta_config)
    timings["meta_classifier"] = time.perf_counter() - start

    victim_accuracy, benign_accuracy = evaluate(victim, test), evaluate(benign, test)
    results = {
        "victim_test_accuracy": victim_accuracy,
        "benign_test_accuracy": benign_accuracy,
        "victim_accuracy_on_transformed": evaluate(victim, d_t),
        "benign_accuracy_on_transformed": evaluate(benign, d_t),
        "meta_classifier": meta_record,
        "feature_dimension": int(victim_features.shape[1]),
        "seconds": {k: round(v, 2) for k, v in timings.items()},
    }
    dataset_info = {
        "defender": defender.name,
        "defender_size": len(defender),
        "test": test.name,
        "classes": defender.classes,
        "input_shape": list(defender.input_shape),
        "transformed": len(d_t),
        "verification_pool": len(verify_rows),
    }
    full_config = {**asdict(config), "transformer_used": _describe(transformer), "meta_classifier": asdict(meta_config)}
    with create_protection(out, METHOD, full_config, force=force) as writer:
        training = {"dataset": defender.name, "test_accuracy": victim_accuracy, **victim_record.to_dict()}
        save_model(victim, card_for(victim, defender.classes, training, {"kind": "victim", "method": METHOD}),
                   writer.path("victim.safetensors"))
        training = {"dataset": defender.name, "test_accuracy": benign_accuracy, **benign_record.to_dict()}
        save_model(benign, card_for(benign, defender.classes, training, {"kind": "benign", "method": METHOD}),
                   writer.path("benign.safetensors"))
        save_file({k: v.contiguous() for k, v in meta.state_dict().items()}, str(writer.path("meta_classifier.safetensors")))
        save_file(
            {
                "images": d_t.images.contiguous(),
                "labels": d_t.labels.contiguous(),
                "indices": d_t.indices.contiguous(),
                "role": torch.isin(torch.arange(len(d_t)), verify_rows).to(torch.uint8),  # 1: verification pool
            },
            str(writer.path("transformed.safetensors")),
        )
        style_source = getattr(transformer, "style_image", None)
        if style_source is not None:
            style_path = Path(style_source)
            if not style_path.is_file():
                style_path = bundled_style_path(str(style_source))
            shutil.copyfile(style_path, writer.path("style" + style_path.suffix.lower()))
        writer.record(dataset=dataset_info, results=results, access=ACCESS)
    return MoveProtection(directory=out, victim=victim, benign=benign, results=results)


def _describe(transformer: StyleTransformer) -> dict:
    describe = getattr(transformer, "describe", None)
    return describe() if callable(describe) else {"transformer": getattr(transformer, "name", type(transformer).__name__)}


def check_suspect(victim_card: ModelCard, suspect_card: ModelCard, suspect_path: str | Path) -> None:
    """White-box MOVE compares gradients weight by weight: the suspect must share V's architecture."""
    expected = (victim_card.arch, victim_card.num_classes, list(victim_card.input_shape))
    found = (suspect_card.arch, suspect_card.num_classes, list(suspect_card.input_shape))
    if expected != found:
        raise SuspectError(
            f"white-box MOVE needs the victim's architecture, classes and input shape "
            f"(arch={expected[0]}, classes={expected[1]}, input={expected[2]}), but the suspect has "
            f"arch={found[0]}, classes={found[1]}, input={found[2]}.",
            path=suspect_path,
            fix="retrain a copy of the victim in the suspect's architecture (MOVE Sec. 5.3), or verify black-box.",
        )


@dataclass
class OpenedMove:
    """A MOVE protection loaded for verification."""

    protection: Protection
    victim_card: ModelCard
    benign: Classifier
    meta: MetaClassifier
    pool_images: torch.Tensor
    pool_labels: torch.Tensor
    config: MoveConfig


def open_protection(directory: str | Path | Protection) -> OpenedMove:
    """Load a MOVE protection for verification (a path is opened and hash-checked first)."""
    protection = directory if isinstance(directory, Protection) else Protection.open(directory)
    directory = protection.directory
    if protection.method != METHOD:
        raise ProtectionError(
            f"this protection was made with method {protection.method!r}, not {METHOD!r}.", path=directory
        )
    saved = {k: v for k, v in protection.config.items() if k in MoveConfig.__dataclass_fields__}
    config = MoveConfig(**saved)
    _, victim_card = load_model(protection.path("victim.safetensors"))
    benign, _ = load_model(protection.path("benign.safetensors"))
    state = load_file(str(protection.path("meta_classifier.safetensors")))
    weight = state.get("net.0.weight")
    if weight is None:
        raise ProtectionError("meta_classifier.safetensors has no 'net.0.weight'.", path=directory)
    meta = MetaClassifier(weight.shape[1], weight.shape[0])
    meta.load_state_dict(state)
    meta.eval()
    transformed = load_file(str(protection.path("transformed.safetensors")))
    pool = transformed["role"].bool()
    return OpenedMove(
        protection=protection,
        victim_card=victim_card,
        benign=benign,
        meta=meta,
        pool_images=transformed["images"][pool],
        pool_labels=transformed["labels"][pool],
        config=config,
    )


def verify(
    protection: str | Path | OpenedMove,
    suspect: Classifier,
    suspect_card: ModelCard,
    *,
    suspect_name: str = "suspect",
    suspect_path: str | Path = "suspect",
    m: int | None = None,
    alpha: float | None = None,
    seed: int = 0,
) -> Verdict:
    """Is ``suspect`` stolen from the protected victim? White-box MOVE (Sec. 5.4, Eq. 9)."""
    opened = protection if isinstance(protection, OpenedMove) else open_protection(protection)
    config = opened.config
    m = config.m if m is None else m
    alpha = config.alpha if alpha is None else alpha
    if m < 2:
        raise ModelproveError(f"m must be at least 2 for a paired t-test, got {m}.")
    check_suspect(opened.victim_card, suspect_card, suspect_path)
    if m > len(opened.pool_images):
        raise ModelproveError(
            f"m = {m} exceeds the {len(opened.pool_images)} transformed images in the verification pool.",
            fix=f"use m <= {len(opened.pool_images)}, or protect with a larger transformation_rate.",
        )
    start = time.perf_counter()
    rows = torch.randperm(len(opened.pool_images), generator=generator(seed))[:m]
    images, labels = opened.pool_images[rows], opened.pool_labels[rows]
    p_suspect = opened.meta.victim_probability(_features(suspect, images, labels, config))
    p_benign = opened.meta.victim_probability(_features(opened.benign, images, labels, config))
    test = paired_ttest_greater(p_suspect.numpy(), p_benign.numpy())
    return Verdict(
        method=METHOD,
        setting=ACCESS,
        suspect=suspect_name,
        stolen=test.p_value < alpha,
        p_value=test.p_value,
        alpha=alpha,
        effect=test.delta_mu,
        effect_name="delta_mu",
        samples=m,
        queries=None,
        seconds=round(time.perf_counter() - start, 3),
        hashes={
            "protection_manifest": sha256_file(opened.protection.directory / "manifest.json"),
            "victim_weights": opened.protection.manifest["files"]["victim.safetensors"],
        },
        details={
            "mu_suspect": float(p_suspect.mean()),
            "mu_benign": float(p_benign.mean()),
            "t_statistic": test.statistic,
            "degenerate": test.degenerate,
            "seed": seed,
        },
    )
