"""A query detector (Hitaj et al. 2019, as CAE Sec. 5 "Evasiveness Attack" uses it): the attacker
trains a binary classifier to tell benign queries from adversarial examples, to refuse or perturb
the defender's verification queries. CAE reports its ROC AUC per ε (Fig. 3b); near 0.5 means the
fingerprint is non-evasive.

Queries are images, so the detector sees them as the API would: rounded to 8-bit pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from modelprove.core.errors import ModelproveError
from modelprove.core.progress import progress_default
from modelprove.core.seeding import generator
from modelprove.data.dataset import ImageDataset
from modelprove.models import Classifier, build_model, predict_proba
from modelprove.stats import roc_auc
from modelprove.training import TrainConfig, train

BENIGN, ADVERSARIAL = 0, 1


@dataclass
class DetectorConfig:
    """The detector's architecture and training (the trainer's SGD); ``test_fraction`` of each class is
    held out to score it when no separate evaluation sets are given."""

    arch: str = "lenet5"
    epochs: int = 10
    lr: float = 0.02
    batch_size: int = 64
    test_fraction: float = 0.5
    seed: int = 0


def _uint8(images: torch.Tensor) -> torch.Tensor:
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def _split(count: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.randperm(count, generator=generator(seed))
    cut = count - max(1, round(fraction * count))
    return order[:cut], order[cut:]


def adversarial_score(detector: Classifier, images: torch.Tensor) -> torch.Tensor:
    """The detector's probability that each query is adversarial (images in [0, 1], 8-bit rounded)."""
    return predict_proba(detector, _uint8(images).float() / 255)[:, ADVERSARIAL]


def train_query_detector(benign: torch.Tensor, adversarial: torch.Tensor, config: DetectorConfig | None = None, *,
                         eval_benign: torch.Tensor | None = None, eval_adversarial: torch.Tensor | None = None,
                         ) -> tuple[Classifier, float]:
    """Train benign (0) vs adversarial (1) on float images in [0, 1]; return (detector, ROC AUC).

    The AUC is measured on ``eval_benign`` vs ``eval_adversarial`` when both are given (e.g. the
    detector trained on FGM/PGD/CW examples, scored on the fingerprint, as CAE does); otherwise on the
    held-out ``test_fraction`` of each input set.
    """
    config = config or DetectorConfig()
    if len(benign) < 2 or len(adversarial) < 2 or benign.shape[1:] != adversarial.shape[1:]:
        raise ModelproveError(f"the detector needs >= 2 benign and >= 2 adversarial images of one shape; got "
                              f"{tuple(benign.shape)} and {tuple(adversarial.shape)}.")
    if (eval_benign is None) != (eval_adversarial is None):
        raise ModelproveError("give both eval_benign and eval_adversarial, or neither.")
    if eval_benign is None:
        b_train, b_test = _split(len(benign), config.test_fraction, config.seed)
        a_train, a_test = _split(len(adversarial), config.test_fraction, config.seed + 1)
        eval_benign, eval_adversarial = benign[b_test], adversarial[a_test]
        benign, adversarial = benign[b_train], adversarial[a_train]
    images = torch.cat([_uint8(benign), _uint8(adversarial)])
    labels = torch.cat([torch.full((len(benign),), BENIGN), torch.full((len(adversarial),), ADVERSARIAL)]).long()
    data = ImageDataset(images, labels, ["benign", "adversarial"], "detector queries", torch.arange(len(images)))
    channels, height, width = data.input_shape
    torch.manual_seed(config.seed)
    detector = build_model(config.arch, channels, 2, (height, width))
    train(detector, data, TrainConfig(epochs=config.epochs, lr=config.lr, batch_size=config.batch_size,
                                      augmentation="none", seed=config.seed),
          description="query detector", show_progress=progress_default())
    auc = roc_auc(adversarial_score(detector, eval_adversarial).numpy(), adversarial_score(detector, eval_benign).numpy())
    return detector.eval(), auc
