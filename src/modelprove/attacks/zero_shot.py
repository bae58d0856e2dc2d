"""Zero-shot stealing (model-accessible, MOVE Sec. 2.1 / 6.1): data-free adversarial distillation,
DFAD (Fang et al. 2019, "Data-Free Adversarial Distillation", Eq. 3-5).

No real image is used. A generator G(z) makes images in [0, 1] of the victim's input shape; the
two play a min-max game on the mean absolute difference (L1) between the student's and the victim's
(teacher's) logits: the student takes ``student_steps`` steps minimising it on G's images, then G
takes one step maximising it (its gradient flows *through* the victim, hence the white-box oracle).
Every image sent through the victim — in the student's and in G's steps — is counted as a query.

The trainer trains on a fixed dataset, and DFAD's batches are made on the fly by G, so this module
runs its own loop (SGD for the student and Adam for G, as DFAD's code does).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from modelprove.access import WHITE_BOX, WhiteBoxAccess, require_access
from modelprove.attacks._shared import check
from modelprove.attacks.base import student_for
from modelprove.core.progress import task
from modelprove.core.seeding import generator
from modelprove.data.dataset import ImageDataset
from modelprove.models import ARCHITECTURES

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


class Generator(nn.Module):
    """DFAD's generator, sized to the victim: z -> width x H/4 x W/4 -> two (upsample, conv, BN,
    LeakyReLU) stages (width, width/2 channels) -> conv to C channels -> sigmoid, so images land in
    [0, 1] as every query must (DFAD ends in tanh + BN because its teacher takes normalised inputs;
    ours normalises itself). DFAD's width is 128; at 28x28 that costs ~40x a cnn_small student's
    forward pass on CPU, hence a smaller default width in the attack's config."""

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


def steal(victim: WhiteBoxAccess, attacker_data: ImageDataset | None, config: ZeroShotConfig):
    del attacker_data  # data-free by definition: the adversary has the model and no samples
    require_access(victim, WHITE_BOX, "attack 'zero_shot'")
    student = student_for(victim, None, config.arch, config.seed)
    with torch.random.fork_rng():
        torch.manual_seed(config.seed + 1)
        gen = Generator(config.nz, victim.input_shape, config.generator_width)
    rng = generator(config.seed)
    opt_s = torch.optim.SGD(student.parameters(), lr=config.lr, momentum=0.9, weight_decay=5e-4)
    opt_g = torch.optim.Adam(gen.parameters(), lr=config.generator_lr)
    sched_s = torch.optim.lr_scheduler.CosineAnnealingLR(opt_s, T_max=config.iterations)
    history = []
    student.train()
    gen.train()
    with frozen(victim.model), task("zero-shot (DFAD)", config.iterations) as bar:
        for step in range(config.iterations):
            for _ in range(config.student_steps):
                with torch.no_grad():
                    fake = gen(torch.randn(config.batch_size, config.nz, generator=rng))
                    teacher = victim.logits(fake)
                loss_s = F.l1_loss(student(fake), teacher)
                opt_s.zero_grad(set_to_none=True)
                loss_s.backward()
                opt_s.step()
            fake = gen(torch.randn(config.batch_size, config.nz, generator=rng))
            loss_g = -F.l1_loss(student(fake), victim.logits(fake))
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            sched_s.step()
            if step % 20 == 0 or step == config.iterations - 1:
                history.append(round(loss_s.item(), 4))
            bar.advance(status=f"student L1 {loss_s.item():.3f}")
    opt_s.zero_grad(set_to_none=True)  # G's step left gradients on the student; do not ship them
    return student.eval(), {"uses_data": False, "student_arch": student.arch, "student_l1_history": history}


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """The victim's weights take no gradient (G's gradient only needs to reach the images)."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)
