"""Evasion detectors against key-sample watermarks (blind watermark, Li et al. ACSAC 2019, Sec. 6.3).

A thief who serves a stolen model can refuse to answer (or answer at random) whenever a query looks
like a key sample. The paper's thief has 10% of the training data and generates as many key samples
with the watermark's method, then trains a binary detector (Eq. 16, key sample = positive):

- :class:`DenseDetector`: three fully connected layers of 512, 256 and 1 units on the flattened image;
- :class:`FeatureDetector`: the feature layers of a trained classifier (the paper: ResNet-18; here the
  stolen model itself, whose weights the thief has) followed by one linear unit. The features are
  frozen (a cheaper, weaker detector than fine-tuning them; their BatchNorm statistics stay the model's).

Both are trained with the project's one trainer (SGD at a fixed lr 0.01 for 20 epochs, as Sec. 6.3, but with
the trainer's Nesterov momentum 0.9, which it always uses) and scored
by ROC AUC on held-out ordinary images vs key samples.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from modelprove.core.errors import ModelproveError
from modelprove.data.dataset import ImageDataset
from modelprove.models import Classifier, predict_logits
from modelprove.stats import roc_auc
from modelprove.training import TrainConfig, train

CLASSES = ["ordinary", "key"]


class DenseDetector(nn.Module):
    """theta_d(x): flatten -> 512 -> 256 -> 1 (ReLU between), one logit for "x is a key sample"."""

    def __init__(self, input_shape: tuple[int, int, int]):
        super().__init__()
        size = int(np.prod(input_shape))
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(size, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
                                 nn.Linear(256, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _without_last_linear(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``model`` whose last nn.Linear is an identity: its penultimate features, and their size."""
    features = copy.deepcopy(model)
    last = None
    for name, module in features.named_modules():
        if isinstance(module, nn.Linear):
            last = (name, module)
    if last is None:
        raise ModelproveError("the feature detector needs a classifier that ends in a linear layer.")
    name, linear = last
    parent = features
    *path, leaf = name.split(".")
    for part in path:
        parent = getattr(parent, part)
    setattr(parent, leaf, nn.Identity())
    return features, linear.in_features


class FeatureDetector(nn.Module):
    """A trained classifier's frozen penultimate features + one linear unit."""

    def __init__(self, model: Classifier):
        super().__init__()
        self.features, size = _without_last_linear(model)
        for p in self.features.parameters():
            p.requires_grad_(False)
        self.head = nn.Linear(size, 1)

    def train(self, mode: bool = True) -> "FeatureDetector":
        super().train(mode)
        self.features.eval()  # frozen: BatchNorm keeps the stolen model's statistics
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            z = self.features(x)
        return self.head(z)


def _bce(logits: torch.Tensor, index: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 16: logistic loss, key samples (label 1) against ordinary samples (label 0)."""
    del index
    return F.binary_cross_entropy_with_logits(logits.squeeze(1), labels.float())


@dataclass
class DetectorConfig:
    epochs: int = 20
    lr: float = 0.01
    batch_size: int = 64
    seed: int = 0


def detector_data(ordinary: torch.Tensor, keys: torch.Tensor, name: str) -> ImageDataset:
    """Ordinary (label 0) and key (label 1) uint8 images as one dataset."""
    images = torch.cat([ordinary, keys])
    labels = torch.cat([torch.zeros(len(ordinary), dtype=torch.int64), torch.ones(len(keys), dtype=torch.int64)])
    return ImageDataset(images, labels, CLASSES, name)


def train_detector(detector: nn.Module, data: ImageDataset, config: DetectorConfig | None = None,
                   *, show_progress: bool = False) -> nn.Module:
    """Eq. 16 by SGD at a fixed learning rate (the paper: 0.01, 20 epochs), no augmentation."""
    config = config or DetectorConfig()
    train(detector, data, TrainConfig(epochs=config.epochs, batch_size=config.batch_size, optimizer="sgd",
                                      lr=config.lr, momentum=0.9, weight_decay=0.0, schedule="constant",
                                      augmentation="none", seed=config.seed),
          loss_fn=_bce, description="evasion detector", show_progress=show_progress)
    return detector.eval()


def detector_scores(detector: nn.Module, images: torch.Tensor) -> np.ndarray:
    """The detector's logit for uint8 images (higher: more key-like)."""
    return predict_logits(detector, images.float() / 255).squeeze(1).numpy()


def detection_auc(detector: nn.Module, ordinary: torch.Tensor, keys: torch.Tensor) -> tuple[float, np.ndarray, np.ndarray]:
    """ROC AUC of the detector separating held-out key samples (positive) from ordinary images."""
    positive, negative = detector_scores(detector, keys), detector_scores(detector, ordinary)
    return roc_auc(positive, negative), positive, negative


# -- the thief's key samples and the paper's two detectors, as one measurement ------------------------


def thief_key_samples(opened, source: ImageDataset, count: int, seed: int, *, encoder=None) -> torch.Tensor:
    """``count`` uint8 key samples a thief makes with the protection's method from its own images (Sec. 6.3:
    "they can generate the same amount of key samples according to the proposed methods").

    The blind watermark's come from ``encoder`` (default: the owner's, the paper's relaxed assumption; the
    paper's main one is a secret encoder, so pass one the thief trained itself); Adi's are new abstract
    images; Zhang's content and noise patterns are stamped on ``source``; Zhang's unrelated keys are images
    of the other domain (any class: the thief does not know which), none of them a key sample itself.
    """
    from modelprove.methods import key_watermarks as kw

    if count > len(source):
        raise ModelproveError(f"the thief needs {count} source images for its key samples; it has {len(source)}.")
    rows = torch.randperm(len(source), generator=torch.Generator().manual_seed(seed))[:count].sort().values
    if opened.method == "blind-watermark":
        from modelprove.methods.blind_watermark import make_key_samples

        return make_key_samples(encoder if encoder is not None else opened.encoder(), opened.logo, source.as_float(rows))
    config = opened.config
    if config.kind == "adi":
        return kw.abstract_images(count, source.input_shape, seed)
    if config.kind == "unrelated":
        from modelprove.data.substitute import load_substitute

        other = load_substitute(config.unrelated_source, like=source)
        keys = {bytes(image.numpy().tobytes()) for image in opened.keys.images}
        fresh = torch.tensor([bytes(image.numpy().tobytes()) not in keys for image in other.images])
        pool = fresh.nonzero().flatten()
        if len(pool) < count:
            raise ModelproveError(f"{config.unrelated_source} has {len(pool)} images that are not key samples; the "
                                  f"thief needs {count}.")
        return other.images[pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:count]]]
    return kw.stamp(source.images[rows], config, seed)


@dataclass
class EvasionResult:
    """ROC AUCs of the two detectors over detector seeds, and the first seed's scores (for ROC curves)."""

    thief_keys: int
    dense: list[float]
    feature: list[float]
    scores: dict[str, tuple[list[float], list[float]]]  # detector -> (key samples', ordinary images')
    # The same feature detector on a model that never saw the key samples (``reference``): what the
    # watermarked host's own features add to what the images carry.
    reference: list[float] = field(default_factory=list)


def evasion_aucs(opened, host: Classifier, thief_clean: torch.Tensor, thief_keys: torch.Tensor,
                 held_out: torch.Tensor, seeds: list[int], config: DetectorConfig | None = None,
                 reference: Classifier | None = None) -> EvasionResult:
    """Train the dense and the feature detector on the thief's ordinary images and key samples, once per seed
    (initialisation and data order), and score each by ROC AUC on the protection's real key samples against
    ``held_out`` ordinary images (Sec. 6.3, Figs. 6-7). With ``reference`` (a model of the same task that
    never saw the keys), the feature detector on its features too."""
    data = detector_data(thief_clean, thief_keys, "evasion detector data")
    base = config or DetectorConfig()
    dense, feature, unseen, scores = [], [], [], {}
    shape = tuple(thief_clean.shape[1:])
    detectors = [("dense", lambda: DenseDetector(shape), dense), ("feature", lambda: FeatureDetector(host), feature)]
    if reference is not None:
        detectors.append(("reference", lambda: FeatureDetector(reference), unseen))
    for seed in seeds:
        detector_config = DetectorConfig(epochs=base.epochs, lr=base.lr, batch_size=base.batch_size, seed=seed)
        for name, make, into in detectors:
            torch.manual_seed(seed)
            detector = train_detector(make(), data, detector_config)
            auc, positive, negative = detection_auc(detector, held_out, opened.keys.images)
            into.append(auc)
            if seed == seeds[0]:
                scores[name] = (positive.tolist(), negative.tolist())
    return EvasionResult(len(thief_keys), dense, feature, scores, unseen)
