"""Students: fresh models trained on a teacher's answers instead of ground truth.

The extraction attacks (attacks/distill, label_query, logit_query, jagielski, knockoff, zero_shot) train
the thief's student through these functions, and MOVE's surrogate-aware meta-classifier trains the
defender's own surrogates of its victim (and matched students of its benign models) through the same
ones, so a defender's surrogate and a thief's student differ only in their data and settings, never in
the code that trains them. A teacher is plain tensors or a function (images -> logits), so this layer
needs no access objects: the attacks count their queries where they ask the victim.

- soft targets (Hinton et al. 2015; MOVE Sec. 6.1 distillation, logit-query): :func:`kd_loss`,
  :func:`soft_target_loss`, :func:`soften`;
- hard labels (label-query): the trainer's cross-entropy on the teacher's top-1 labels;
- data-free adversarial distillation (DFAD, Fang et al. 2019, Eq. 3-5; MOVE's zero-shot):
  :func:`data_free_distill` with its :class:`Generator`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from modelprove.core.errors import ModelproveError
from modelprove.core.progress import task
from modelprove.core.seeding import generator
from modelprove.data.dataset import ImageDataset
from modelprove.training.trainer import LossFn, TrainConfig, TrainRecord, train

PROBABILITY_FLOOR = 1e-12  # a returned 0 would make log(p) infinite; it stays the smallest class after softening


def soften(probabilities: torch.Tensor, T: float) -> torch.Tensor:
    """softmax(z / T) from p = softmax(z) alone: softmax(log p / T) (CAE Eq. 11; equal to p^(1/T) renormalised)."""
    return torch.softmax(probabilities.clamp_min(PROBABILITY_FLOOR).log() / T, dim=1)


def kd_loss(student_logits: torch.Tensor, soft_targets: torch.Tensor, labels: torch.Tensor, T: float,
            alpha: float) -> torch.Tensor:
    """Hinton et al.'s loss, alpha * T^2 * KL(q_T || softmax(s / T)) + (1 - alpha) * CE(s, y); the T^2 keeps
    the soft term's gradients on the hard term's scale."""
    soft = F.kl_div(F.log_softmax(student_logits / T, dim=1), soft_targets, reduction="batchmean") * T * T
    if alpha == 1.0:
        return soft
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)


def distillation_loss(targets: torch.Tensor, T: float, alpha: float) -> LossFn:
    """:func:`kd_loss` with soft targets stored per dataset row (looked up by the batch's indices)."""

    def loss(logits: torch.Tensor, index: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return kd_loss(logits, targets[index], labels, T, alpha)

    return loss


def soft_target_loss(targets: torch.Tensor) -> LossFn:
    """KL(targets[index] || softmax(logits)), batch mean: the student matches stored probability vectors.

    Its gradient equals that of cross-entropy with soft labels (they differ by the targets' entropy, a
    constant), so it serves MOVE's logit-query (KL) and Jagielski's soft-label training alike.
    """

    def loss(logits: torch.Tensor, index: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        del labels
        return F.kl_div(F.log_softmax(logits, dim=1), targets[index], reduction="batchmean")

    return loss


@dataclass
class DataFreeConfig:
    """DFAD's game (Fang et al. 2019): ``iterations`` generator steps, each after ``student_steps`` student
    steps on ``batch_size`` generated images; the student's SGD rate ``lr`` (cosine schedule), G's Adam
    rate ``generator_lr``, noise dimension ``nz`` and G's ``width``."""

    iterations: int = 200
    student_steps: int = 5
    batch_size: int = 128
    lr: float = 0.1
    generator_lr: float = 1e-3
    nz: int = 100
    width: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.student_steps < 1 or self.nz < 1:
            raise ModelproveError(f"data-free distillation needs iterations, student_steps and nz >= 1, got "
                                  f"{self.iterations}, {self.student_steps}, {self.nz}.")
        if self.batch_size < 2:
            raise ModelproveError(f"data-free distillation needs batch_size >= 2 (the generator uses BatchNorm), "
                                  f"got {self.batch_size}.")
        if self.width < 2 or self.lr <= 0 or self.generator_lr <= 0:
            raise ModelproveError("data-free distillation needs width >= 2 and positive learning rates.")


class Generator(nn.Module):
    """DFAD's generator, sized to the teacher: z -> width x H/4 x W/4 -> two (upsample, conv, BN,
    LeakyReLU) stages (width, width/2 channels) -> conv to C channels -> sigmoid, so images land in
    [0, 1] as every query must (DFAD ends in tanh + BN because its teacher takes normalised inputs;
    ours normalise themselves). DFAD's width is 128; at 28x28 that costs ~40x a cnn_small student's
    forward pass on CPU, hence the smaller default width of :class:`DataFreeConfig`."""

    def __init__(self, nz: int, shape: tuple[int, int, int], width: int = 128):
        super().__init__()
        channels, height, side = shape
        self.shape, self.width = shape, width
        self.h0, self.w0 = math.ceil(height / 4), math.ceil(side / 4)
        cells = width * self.h0 * self.w0
        self.project = nn.Sequential(nn.Linear(nz, cells), nn.BatchNorm1d(cells))
        half = max(1, width // 2)
        self.body = nn.Sequential(
            nn.Upsample(scale_factor=2), nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Upsample(scale_factor=2), nn.Conv2d(width, half, 3, padding=1, bias=False), nn.BatchNorm2d(half),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(half, channels, 3, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.body(self.project(z).view(-1, self.width, self.h0, self.w0))
        if tuple(x.shape[2:]) != self.shape[1:]:
            x = F.interpolate(x, size=self.shape[1:], mode="bilinear", align_corners=False)
        return torch.sigmoid(x)


def data_free_distill(student: nn.Module, teacher_logits: Callable[[torch.Tensor], torch.Tensor],
                      input_shape: tuple[int, int, int], config: DataFreeConfig, *,
                      description: str = "data-free distillation (DFAD)", show_progress: bool = True) -> list[float]:
    """Train ``student`` in place by DFAD (Eq. 3-5): no real image is used. G(z) makes images; the student
    takes ``student_steps`` steps minimising the mean absolute difference (L1) between its logits and the
    teacher's on G's images, then G takes one step maximising it — its gradient flows *through* the
    teacher, so ``teacher_logits`` must be differentiable in its input (its own weights may be frozen).
    SGD for the student and Adam for G, as DFAD's code. Returns the student's L1 every 20 iterations."""
    with torch.random.fork_rng():
        torch.manual_seed(config.seed + 1)
        gen = Generator(config.nz, input_shape, config.width)
    rng = generator(config.seed)
    opt_s = torch.optim.SGD(student.parameters(), lr=config.lr, momentum=0.9, weight_decay=5e-4)
    opt_g = torch.optim.Adam(gen.parameters(), lr=config.generator_lr)
    sched_s = torch.optim.lr_scheduler.CosineAnnealingLR(opt_s, T_max=config.iterations)
    history: list[float] = []
    student.train()
    gen.train()
    with task(description, config.iterations, enabled=show_progress) as bar:
        for step in range(config.iterations):
            for _ in range(config.student_steps):
                with torch.no_grad():
                    fake = gen(torch.randn(config.batch_size, config.nz, generator=rng))
                    teacher = teacher_logits(fake)
                loss_s = F.l1_loss(student(fake), teacher)
                opt_s.zero_grad(set_to_none=True)
                loss_s.backward()
                opt_s.step()
            fake = gen(torch.randn(config.batch_size, config.nz, generator=rng))
            loss_g = -F.l1_loss(student(fake), teacher_logits(fake))
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            sched_s.step()
            if step % 20 == 0 or step == config.iterations - 1:
                history.append(round(loss_s.item(), 4))
            bar.advance(status=f"student L1 {loss_s.item():.3f}")
    opt_s.zero_grad(set_to_none=True)  # G's step left gradients on the student; do not ship them
    student.eval()
    return history


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """``model``'s weights take no gradient (DFAD's generator only needs the gradient to reach the images)."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


# How a student learns from its teacher's stored answers: Hinton distillation of softened outputs blended
# with the data's own labels ("distill"), the teacher's top-1 labels only ("label"), or its probability
# vectors ("logits"). Data-free students (DFAD) are :func:`data_free_distill`'s.
STUDENT_KINDS = ("distill", "label", "logits")


def fit_student(student: nn.Module, data: ImageDataset, answers: torch.Tensor, kind: str, training: TrainConfig, *,
                T: float = 4.0, alpha: float = 0.9, description: str | None = None,
                show_progress: bool = True) -> TrainRecord:
    """Train ``student`` in place on a teacher's ``answers`` (probability vectors, one row per image of
    ``data``, asked once and stored) the way an extraction of ``kind`` would. A stored soft answer belongs to
    the un-augmented image, so soft kinds train without augmentation whatever ``training`` says."""
    if kind not in STUDENT_KINDS:
        raise ModelproveError(f"unknown student kind {kind!r}.", fix=f"use one of {', '.join(STUDENT_KINDS)}.")
    if answers.shape[0] != len(data):
        raise ModelproveError(f"{answers.shape[0]} answers for {len(data)} images of {data.name}.")
    label = description or f"student ({kind})"
    if kind == "label":
        relabelled = ImageDataset(data.images, answers.argmax(dim=1), list(data.classes), f"{data.name}+teacher-labels",
                                  data.indices)
        return train(student, relabelled, training, description=label, show_progress=show_progress)
    loss = distillation_loss(soften(answers, T), T, alpha) if kind == "distill" else soft_target_loss(answers)
    return train(student, data, dataclasses.replace(training, augmentation="none"), loss_fn=loss, description=label,
                 show_progress=show_progress)


__all__ = ["STUDENT_KINDS", "fit_student", "frozen", "DataFreeConfig", "Generator", "PROBABILITY_FLOOR", "data_free_distill", "distillation_loss", "kd_loss",
           "soft_target_loss", "soften"]
