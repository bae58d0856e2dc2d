"""Knowledge distillation (dataset-accessible, MOVE Sec. 2.1 / 6.1; Hinton et al. 2015).

The adversary holds data of the victim's distribution (here: the attacker split, with its labels)
but may only query the victim. A fresh student (any registered ``arch``) is trained on

    loss = alpha * T^2 * KL(q_T || softmax(s / T)) + (1 - alpha) * CE(s, y)

with s the student's logits, y the attacker's own labels, and q_T the victim's softened output.
The oracle is black-box, so only probabilities p = softmax(z) are seen, never logits z; softening
by T is then softmax(log p / T), which equals softmax(z / T) exactly (training.students). The victim is queried once
per transfer-set image before training; targets are looked up by dataset index, so augmentation
is "none" by default (a soft target belongs to the un-augmented image).
"""

from __future__ import annotations

from dataclasses import dataclass

from modelprove.access import BLACK_BOX, BlackBoxAccess, require_access
from modelprove.attacks._shared import check, check_training, query_probabilities, require_data
from modelprove.attacks.base import student_for
from modelprove.data.dataset import ImageDataset
from modelprove.models import ARCHITECTURES
from modelprove.training import TrainConfig, train
from modelprove.training.students import distillation_loss, soften

PAPER_SETTING = ("MOVE Sec. 6.1: Hinton KD on the victim's CIFAR-10 training set, SGD lr 0.1, momentum 0.9 (epochs "
                 "not stated); here 10 epochs, lr 0.05, T=4, alpha=0.9 on the attacker split, for 2 CPU cores")


@dataclass
class DistillConfig:
    """arch: the student's architecture (None: the victim's if known, else cnn_small); T: softening
    temperature (> 0; 1 = the victim's own probabilities); alpha: weight of the KD term against the
    hard-label cross-entropy (1 = soft targets only); epochs/lr/batch_size/augmentation: training."""

    arch: str | None = None
    T: float = 4.0
    alpha: float = 0.9
    epochs: int = 10
    lr: float = 0.05
    batch_size: int = 128
    augmentation: str = "none"
    seed: int = 0

    def __post_init__(self) -> None:
        check(self, "arch", self.arch is None or self.arch in ARCHITECTURES,
              f"None or a registered architecture ({', '.join(sorted(ARCHITECTURES))})", "cnn_small")
        check(self, "T", self.T > 0, "a positive temperature", "4")
        check(self, "alpha", 0.0 <= self.alpha <= 1.0, "a weight in [0, 1]", "0.9")
        check_training(self)


def steal(victim: BlackBoxAccess, attacker_data: ImageDataset | None, config: DistillConfig):
    require_access(victim, BLACK_BOX, "attack 'distill'")
    data = require_data(attacker_data, victim, "distill")
    targets = soften(query_probabilities(victim, data), config.T)
    student = student_for(victim, data, config.arch, config.seed)

    record = train(
        student, data,
        TrainConfig(epochs=config.epochs, lr=config.lr, batch_size=config.batch_size,
                    augmentation=config.augmentation, seed=config.seed),
        loss_fn=distillation_loss(targets, config.T, config.alpha), description=f"distill (T={config.T:g}, alpha={config.alpha:g})",
    )
    return student.eval(), {"training": record.to_dict(), "student_arch": student.arch}
