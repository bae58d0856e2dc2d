"""Zero-shot stealing (model-accessible, MOVE Sec. 2.1 / 6.1): data-free adversarial distillation,
DFAD (Fang et al. 2019, "Data-Free Adversarial Distillation", Eq. 3-5).

No real image is used. A generator G(z) makes images in [0, 1] of the victim's input shape; the
two play a min-max game on the mean absolute difference (L1) between the student's and the victim's
(teacher's) logits: the student takes ``student_steps`` steps minimising it on G's images, then G
takes one step maximising it (its gradient flows *through* the victim, hence the white-box oracle).
Every image sent through the victim — in the student's and in G's steps — is counted as a query.

The trainer trains on a fixed dataset, and DFAD's batches are made on the fly by G, so the game is
its own loop, training.students.data_free_distill (SGD for the student and Adam for G, as DFAD's code
does), which MOVE's defender-made data-free surrogates share.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelprove.access import WHITE_BOX, WhiteBoxAccess, require_access
from modelprove.attacks._shared import check
from modelprove.attacks.base import student_for
from modelprove.data.dataset import ImageDataset
from modelprove.models import ARCHITECTURES
from modelprove.training.students import DataFreeConfig, data_free_distill, frozen

PAPER_SETTING = ("MOVE Sec. 6.1 (DFAD code): 200 epochs x 50 iterations, batch 256, student SGD lr 0.1; here "
                 "200 iterations of batch 128 (5 student steps each), generator width 32 (DFAD: 128), bounded for 2 CPU cores")


@dataclass
class ZeroShotConfig:
    """iterations: generator steps (each preceded by ``student_steps`` student steps); batch_size:
    generated images per step; lr: the student's SGD rate; generator_lr: G's Adam rate; nz: noise
    dimension; arch: the student's architecture (None: the victim's)."""

    iterations: int = 200
    student_steps: int = 5
    batch_size: int = 128
    lr: float = 0.1
    generator_lr: float = 1e-3
    nz: int = 100
    generator_width: int = 32
    arch: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check(self, "iterations", self.iterations >= 1, "an integer >= 1", "200")
        check(self, "student_steps", self.student_steps >= 1, "an integer >= 1", "5")
        check(self, "batch_size", self.batch_size >= 2, "an integer >= 2 (the generator uses BatchNorm)", "128")
        check(self, "lr", self.lr > 0, "a positive learning rate", "0.1")
        check(self, "generator_lr", self.generator_lr > 0, "a positive learning rate", "0.001")
        check(self, "nz", self.nz >= 1, "an integer >= 1", "100")
        check(self, "generator_width", self.generator_width >= 2, "an integer >= 2", "32")
        check(self, "arch", self.arch is None or self.arch in ARCHITECTURES,
              f"None or a registered architecture ({', '.join(sorted(ARCHITECTURES))})", "cnn_small")


def steal(victim: WhiteBoxAccess, attacker_data: ImageDataset | None, config: ZeroShotConfig):
    del attacker_data  # data-free by definition: the adversary has the model and no samples
    require_access(victim, WHITE_BOX, "attack 'zero_shot'")
    student = student_for(victim, None, config.arch, config.seed)
    game = DataFreeConfig(iterations=config.iterations, student_steps=config.student_steps,
                          batch_size=config.batch_size, lr=config.lr, generator_lr=config.generator_lr, nz=config.nz,
                          width=config.generator_width, seed=config.seed)
    with frozen(victim.model):
        history = data_free_distill(student, victim.logits, victim.input_shape, game, description="zero-shot (DFAD)")
    return student, {"uses_data": False, "student_arch": student.arch, "student_l1_history": history}
