"""Key-sample watermark baselines the blind watermark is compared with (Li et al., ACSAC 2019, Sec. 1.1, 6).

One method, four kinds, each registered under its own name with a config whose ``kind`` defaults
to it:

- ``adi`` (Adi et al., USENIX Security 2018): abstract images, each with a randomly chosen label.
  Adi et al. used 100 hand-picked abstract pictures; here they are generated (seeded): smooth random
  colour fields with random stripes and discs, which is what such pictures look like at 28x28.
- ``zhang-content`` (Zhang et al., AsiaCCS 2018, WM_content): the text "TEST" stamped on ordinary
  training images, all labelled one target class.
- ``zhang-noise`` (WM_noise): Gaussian noise added to ordinary images, labelled the target class.
- ``zhang-unrelated`` (WM_unrelated): images of another domain (MNIST digits of one class on a
  Fashion-MNIST model), labelled the target class. Zhang et al. pick the target freely ("airplane" for
  digit 1 on CIFAR-10); here it is chosen by default (``target_label=-1``, :func:`choose_target`) as the class
  that reference models, trained by the defender with recipes of their own (none a null-panel recipe), least
  often give images of the unrelated class. Why: the key samples are one cluster of near-alike images, so an
  honest model's key accuracy is one draw of how it maps that cluster, not 100 independent trials, and that
  draw is heavy-tailed across seeds and recipes. With the old fixed target (T-shirt for digit 1) the benchmark
  accused three of its 30 independent models, SGD-trained MLPs that gave 9-12% of the keys the target against
  the panel MLPs' 0.9% ± 0.8% (round 2's docs/results/watermarks-fmnist.md); the reference models' shares of
  every class are kept in the protection's results (``target_choice``) and shown by the benchmark's
  key-samples study.

The host is trained with the project's one trainer on the defender data plus the key samples,
repeated ``key_repeats`` times so that 1% of keys are not drowned out (Zhang et al. mixed their
watermarks into training the same way). Verification is the blind watermark's (key accuracy with
label-only access, :mod:`modelprove.methods.key_samples`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from modelprove.access import LABEL_ONLY, LabelOnlyAccess
from modelprove.core.errors import ModelproveError, ProtectionError
from modelprove.core.seeding import generator
from modelprove.core.verdict import Verdict
from modelprove.data.dataset import ImageDataset
from modelprove.methods.key_samples import (
    VERIFY_OPTIONS,
    KeySet,
    OpenedKeyWatermark,
    key_accuracy,
    open_key_watermark,
    save_host_and_keys,
    KeySampleMethod,
)
from modelprove.methods.common import TrainsModels, check_same_task, fresh_model
from modelprove.methods.protection import Protection, create_protection, ensure_writable
from modelprove.models import Classifier
from modelprove.training import evaluate, train

ACCESS = (LABEL_ONLY,)
KINDS = {"adi": "adi", "content": "zhang-content", "noise": "zhang-noise", "unrelated": "zhang-unrelated"}


@dataclass
class KeyWatermarkConfig(TrainsModels):
    """A baseline key-sample watermark; ``kind`` is adi, content, noise or unrelated."""

    kind: str = "adi"
    arch: str = "cnn_small"
    key_fraction: float = 0.01  # key samples: this share of the defender set (as the blind watermark)
    key_repeats: int = 10  # copies of the key set in the training data
    target_label: int = 0  # content / noise / unrelated: every key sample's label; -1: choose_target's
    # reference models that choose the unrelated keys' target: ARCH:RECIPE (methods.panel.RECIPES), none a
    # panel recipe, so that nothing of the protection is fitted to the null panel
    reference_models: str = ("mlp:adam-crop,mlp:sgd-none,mlp:sgd-flip-long,lenet5:adam-crop,lenet5:sgd-none,"
                             "lenet5:sgd-flip-long")
    reference_epochs: int = 5  # of each reference model (its recipe may scale them)
    text: str = "TEST"  # content
    noise_std: float = 0.3  # noise: std of the Gaussian noise on [0, 1] pixels
    unrelated_source: str = "mnist-digits"  # unrelated: a data.substitute name
    unrelated_class: int = 1  # unrelated: which class of the source (Zhang et al. used digit 1)
    epochs: int = 6
    batch_size: int = 128
    lr: float = 0.05
    augmentation: str = "crop"
    t_acc: float = 0.5
    significance: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ModelproveError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}.")
        if not 0.0 < self.key_fraction < 1.0:
            raise ModelproveError(f"key_fraction must be in (0, 1), got {self.key_fraction}.")
        if self.key_repeats < 1:
            raise ModelproveError(f"key_repeats must be >= 1, got {self.key_repeats}.")
        if not 0.0 <= self.t_acc < 1.0:
            raise ModelproveError(f"t_acc must be in [0, 1), got {self.t_acc}.")
        if self.noise_std <= 0:
            raise ModelproveError(f"noise_std must be > 0, got {self.noise_std}.")
        if self.reference_epochs < 1:
            raise ModelproveError(f"reference_epochs must be >= 1, got {self.reference_epochs}.")
        if self.target_label < -1 or (self.target_label == -1 and self.kind != "unrelated"):
            raise ModelproveError(f"target_label must be a class (0 or more){' or -1 (chosen)' if self.kind == 'unrelated' else ''}, "
                                  f"got {self.target_label}.")
        self.references()  # checked here, trained at protect time

    def references(self) -> list[tuple[str, str]]:
        """(architecture, recipe) of each reference model of :func:`choose_target`."""
        from modelprove.methods.panel import PANEL_RECIPES, RECIPES
        from modelprove.models import ARCHITECTURES

        pairs = []
        for item in (part.strip() for part in self.reference_models.split(",") if part.strip()):
            arch, _, recipe = item.partition(":")
            if arch not in ARCHITECTURES or recipe not in RECIPES or recipe in PANEL_RECIPES:
                raise ModelproveError(f"reference_models: {item!r} is not ARCH:RECIPE with a known architecture and a "
                                      "recipe that is not a null-panel recipe.",
                                      fix=f"recipes: {', '.join(r for r in RECIPES if r not in PANEL_RECIPES)}.")
            pairs.append((arch, recipe))
        if self.kind == "unrelated" and self.target_label == -1 and not pairs:
            raise ModelproveError("target_label=-1 needs at least one reference model to choose it.",
                                  fix="set reference_models, or a target_label.")
        return pairs

    @property
    def method(self) -> str:
        return KINDS[self.kind]


@dataclass
class AdiConfig(KeyWatermarkConfig):
    kind: str = "adi"


@dataclass
class ZhangContentConfig(KeyWatermarkConfig):
    kind: str = "content"


@dataclass
class ZhangNoiseConfig(KeyWatermarkConfig):
    kind: str = "noise"


@dataclass
class ZhangUnrelatedConfig(KeyWatermarkConfig):
    kind: str = "unrelated"
    target_label: int = -1


# (kind, registry name, description): the four registry entries in methods/__init__.py
REGISTRY = (
    ("adi", "adi", "Adi et al. 2018 key-sample watermark: abstract images with random labels; key accuracy"),
    ("content", "zhang-content", "Zhang et al. 2018 WM_content: 'TEST' stamped on images, one target label"),
    ("noise", "zhang-noise", "Zhang et al. 2018 WM_noise: Gaussian noise on images, one target label"),
    ("unrelated", "zhang-unrelated", "Zhang et al. 2018 WM_unrelated: other-domain images (MNIST digits), one target"),
)
CONFIGS = {"adi": AdiConfig, "content": ZhangContentConfig, "noise": ZhangNoiseConfig, "unrelated": ZhangUnrelatedConfig}


# -- key sample generators: one function, used by protect and by the study's detectors --------------


def abstract_images(count: int, shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """Adi-style abstract pictures, (count, C, H, W) uint8: a smooth random field (4x4 noise upsampled)
    plus random stripes and a disc, each image its own colours."""
    channels, height, width = shape
    g = generator(seed)
    base = F.interpolate(torch.rand(count, channels, 4, 4, generator=g), size=(height, width), mode="bicubic",
                         align_corners=False)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    angle = torch.rand(count, 1, 1, generator=g) * torch.pi
    frequency = 2 + torch.rand(count, 1, 1, generator=g) * 6
    stripes = (torch.sin(2 * torch.pi * frequency * (xs * torch.cos(angle) + ys * torch.sin(angle))) > 0).float()
    centre = torch.rand(count, 2, 1, 1, generator=g)
    radius = 0.1 + 0.25 * torch.rand(count, 1, 1, generator=g)
    disc = (((xs - centre[:, 0]) ** 2 + (ys - centre[:, 1]) ** 2) < radius**2).float()
    colours = torch.rand(count, channels, 2, generator=g)
    image = 0.5 * base + 0.3 * stripes.unsqueeze(1) * colours[..., 0, None, None] \
        + 0.5 * disc.unsqueeze(1) * colours[..., 1, None, None]
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def text_mask(text: str, shape: tuple[int, int, int]) -> torch.Tensor:
    """``text`` rendered white on black at the bottom of an (H, W) image, floats in [0, 1]."""
    from PIL import Image, ImageDraw, ImageFont

    _, height, width = shape
    scale = 8
    canvas = Image.new("L", (width * scale, height * scale), 0)
    draw = ImageDraw.Draw(canvas)
    size = height * scale // 3
    font = ImageFont.load_default(size=size)
    while size > 6 and draw.textlength(text, font=font) > width * scale * 0.9:
        size = int(size * 0.85)
        font = ImageFont.load_default(size=size)
    w = draw.textlength(text, font=font)
    draw.text(((width * scale - w) / 2, height * scale - size * 1.3), text, fill=255, font=font)
    small = canvas.resize((width, height), Image.LANCZOS)
    return torch.from_numpy(np.asarray(small, dtype=np.float32).copy()).view(height, width) / 255


def stamp(images: torch.Tensor, config: KeyWatermarkConfig, seed: int) -> torch.Tensor:
    """The content or noise pattern on uint8 ordinary images; returns uint8 key samples."""
    x = images.float() / 255
    if config.kind == "content":
        mask = text_mask(config.text, tuple(images.shape[1:]))
        x = torch.maximum(x, mask)  # white text over the image, as Zhang et al.'s "TEST"
    elif config.kind == "noise":
        x = x + config.noise_std * torch.randn(x.shape, generator=generator(seed))
    else:
        raise ModelproveError(f"stamp applies content or noise patterns, not {config.kind!r}.")
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def unrelated_images(config: KeyWatermarkConfig, like: ImageDataset, count: int, seed: int,
                     skip: int = 0) -> torch.Tensor:
    """``count`` images of ``config.unrelated_class`` from the other-domain source, shaped like ``like``;
    ``skip`` leaves out the first images of the seeded order (a disjoint set for the study)."""
    from modelprove.data.substitute import load_substitute

    source = load_substitute(config.unrelated_source, like=like)
    rows = (source.labels == config.unrelated_class).nonzero().flatten()
    if len(rows) < skip + count:
        raise ModelproveError(
            f"{config.unrelated_source} has only {len(rows)} images of class {config.unrelated_class}; "
            f"{skip + count} are needed.", fix="lower key_fraction, or pick another unrelated_class.")
    rows = rows[torch.randperm(len(rows), generator=generator(seed))][skip:skip + count]
    return source.images[rows]


def choose_target(config: KeyWatermarkConfig, defender: ImageDataset, images: torch.Tensor, *,
                  show_progress: bool = True) -> tuple[int, dict]:
    """The unrelated keys' target: the class that the reference models least often give ``images`` (uint8
    images of the unrelated class, none of them a key sample) — the smallest share in the worst reference
    model, ties by the mean share — so that an honest model is unlikely to give many key samples their label.

    Each reference model is trained on the defender's data with a recipe of methods.panel that no null panel
    uses, its own seed, ``reference_epochs``; -> (the class, a record of every model's shares).
    """
    from modelprove.methods.panel import RECIPES, recipe_data, recipe_training
    from modelprove.models import predict_labels

    shares, models = [], []
    for i, (arch, recipe_name) in enumerate(config.references()):
        recipe, seed = RECIPES[recipe_name], config.seed + 7000 + i
        data = recipe_data(recipe, defender, seed)
        model = fresh_model(arch, data, seed)
        train(model, data, recipe_training(recipe, config.reference_epochs, config.batch_size, seed),
              description=f"reference model {arch} {recipe_name}", show_progress=show_progress)
        answers = predict_labels(model.eval(), images.float() / 255)
        shares.append(torch.bincount(answers, minlength=defender.num_classes).float() / len(answers))
        models.append(f"{arch}:{recipe_name}")
    table = torch.stack(shares)
    worst, mean = table.max(dim=0).values, table.mean(dim=0)
    chosen = min(range(defender.num_classes), key=lambda c: (worst[c].item(), mean[c].item(), c))
    return chosen, {"chosen": chosen, "class": defender.classes[chosen], "images": len(images), "models": models,
                    "shares": [[round(v, 4) for v in row] for row in table.tolist()]}


def _class_size(config: KeyWatermarkConfig, like: ImageDataset) -> int:
    from modelprove.data.substitute import load_substitute

    return int((load_substitute(config.unrelated_source, like=like).labels == config.unrelated_class).sum())


def make_key_samples(config: KeyWatermarkConfig, ordinary: ImageDataset, count: int, seed: int,
                     *, skip: int = 0, target: int | None = None) -> KeySet:
    """``count`` key samples of ``config.kind`` with their labels (``target``, default the config's); content/noise
    stamp images of ``ordinary`` whose label is not the target (so the watermark, not the image, carries t_key)."""
    g = generator(seed)
    shape = ordinary.input_shape
    if config.kind == "adi":
        images = abstract_images(count, shape, seed)
        return KeySet(images, torch.randint(0, ordinary.num_classes, (count,), generator=g))
    target = config.target_label if target is None else target
    if not 0 <= target < ordinary.num_classes:
        raise ModelproveError(f"target_label must be in 0..{ordinary.num_classes - 1}, got {target}.")
    targets = torch.full((count,), target, dtype=torch.int64)
    if config.kind == "unrelated":
        return KeySet(unrelated_images(config, ordinary, count, seed, skip), targets)
    candidates = (ordinary.labels != target).nonzero().flatten()
    if len(candidates) < count:
        raise ModelproveError(f"{ordinary.name} has only {len(candidates)} images outside the target class; "
                              f"{count} key samples are needed.")
    rows = candidates[torch.randperm(len(candidates), generator=g)[:count]].sort().values
    return KeySet(stamp(ordinary.images[rows], config, seed + 1), targets, originals=ordinary.images[rows].clone(),
                  indices=ordinary.indices[rows].clone())


# -- protect / open / verify ------------------------------------------------------------------------


@dataclass
class KeyWatermarkProtection:
    directory: Path
    host: Classifier
    keys: KeySet
    results: dict = field(default_factory=dict)


def train_host(defender: ImageDataset, keys: KeySet, config: KeyWatermarkConfig, *, show_progress: bool = True):
    """The host, trained with training.train on D plus ``key_repeats`` copies of the key set."""
    key_data = ImageDataset(keys.images, keys.targets, defender.classes, f"{config.method} keys")
    data = ImageDataset.concat([defender, *[key_data] * config.key_repeats], name=f"{defender.name}+{config.method}")
    host = fresh_model(config.arch, defender, config.seed)
    record = train(host, data, config.train_config(), description=f"host ({config.method})",
                   show_progress=show_progress)
    return host, record


def build(
    defender: ImageDataset,
    test: ImageDataset,
    out: str | Path,
    config: KeyWatermarkConfig | None = None,
    *,
    force: bool = False,
) -> KeyWatermarkProtection:
    """Make the key samples, train a host that learns them, and write the protection to ``out``."""
    config = config or AdiConfig()
    check_same_task(defender, test)
    out = Path(out)
    ensure_writable(out, force)
    count = max(2, round(config.key_fraction * len(defender)))
    target, chosen = config.target_label, None
    if config.kind == "unrelated" and target == -1:
        # the rest of the unrelated class: the key samples are its first ``count`` in make_key_samples' order
        others = unrelated_images(config, defender, _class_size(config, defender) - count, config.seed + 3, skip=count)
        target, chosen = choose_target(config, defender, others)
    keys = make_key_samples(config, defender, count, config.seed + 3, target=target)
    host, record = train_host(defender, keys, config)
    results = {
        "host_test_accuracy": evaluate(host, test),
        "key_accuracy": key_accuracy(host, keys),
        "key_samples": len(keys),
        "seconds": {"train_host": record.seconds},
        **({"target_choice": chosen} if chosen else {}),
    }
    with create_protection(out, config.method, asdict(config), force=force) as writer:
        training = {"dataset": defender.name, "test_accuracy": results["host_test_accuracy"], **record.to_dict()}
        save_host_and_keys(writer, config.method, host, training, keys, defender, test, results)
    return KeyWatermarkProtection(out, host, keys, results)


def open_protection(directory: str | Path | Protection) -> OpenedKeyWatermark:
    """Load any of the four baselines' protections (the manifest names which)."""
    protection = directory if isinstance(directory, Protection) else Protection.open(directory)
    kind = {method: kind for kind, method in KINDS.items()}.get(protection.method)
    if kind is None:
        raise ProtectionError(f"this protection was made with method {protection.method!r}, not a key-watermark "
                              f"baseline ({', '.join(KINDS.values())}).", path=protection.directory)
    return open_key_watermark(protection, protection.method, CONFIGS[kind])


class KeyWatermark(KeySampleMethod):
    """One of the four baselines (Adi; Zhang content, noise, unrelated), by its config's kind."""

    def __init__(self, kind: str, name: str, description: str):
        self.kind, self.name, self.description, self.config = kind, name, description, CONFIGS[kind]

    def build(self, defender, test, out, config, *, force=False, **inputs):
        return build(defender, test, out, config, force=force)

    def open(self, directory):
        opened = open_protection(directory)
        Protection.open_for(opened.protection, self.name)
        return opened


WATERMARKS = {name: KeyWatermark(kind, name, description) for kind, name, description in REGISTRY}


def protect(defender, test, out, config: KeyWatermarkConfig | None = None, *, force=False, **kwargs):
    """Make the key samples, train a host that learns them, calibrate, write the protection to ``out``."""
    config = config or AdiConfig()
    return WATERMARKS[config.method].protect(defender, test, out, config, force=force, **kwargs)


def verify(protection, suspect, *, setting=None, seed=0, suspect_name=None, **options) -> Verdict:
    """Key accuracy with label-only access (:meth:`OwnershipMethod.verify`)."""
    opened = protection if isinstance(protection, OpenedKeyWatermark) else open_protection(protection)
    return WATERMARKS[opened.method].verify(opened, suspect, setting=setting, seed=seed, suspect_name=suspect_name,
                                            **options)
