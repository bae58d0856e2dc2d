"""Papernot et al. (2017) substitute training with Jacobian-based dataset augmentation (query-only,
label-only oracle; CAE Sec. 5 and App. A.5.1, Eq. 13-15).

Start from a small seed set S_0 of attacker images (``seed_per_class`` per class, chosen with the
attacker's own labels), label it with the victim's top-1 answers O(x), train the substitute F, then
for ``rounds`` rounds grow the set,

    S_{r+1} = S_r ∪ { clip(x + λ_r · sign(∇_x F(x)[O(x)]), 0, 1) : x ∈ S_r },

query the victim on the NEW points only, and continue training F on S_{r+1} (warm start, as the
authors' cleverhans code does). λ_r = λ · (-1)^⌊r/τ⌋ with the paper's periodic step size when
``tau`` > 0, else λ_r = λ. The gradient is that of log F(x)[O(x)]: its sign equals that of the
probability's, but it does not vanish where the softmax saturates in float32.
New points are stored as 8-bit images (as every dataset here), and the victim is queried on exactly
the stored pixels, so a label always belongs to the image the substitute trains on. Queries:
|S_0| · 2^rounds. Augmentation "none": the Jacobian points are the paper's only augmentation.

Paper (MNIST): 150 seed images, ρ = 6 rounds, λ = 0.1, 10 epochs per round; here 10 seed images
per class. The paper's reservoir sampling (to bound the set for many rounds) is not implemented:
with 6 rounds the set stays at 64 x |S_0| images. Measured with the defaults on a cnn_small
Fashion-MNIST victim (87.8% test accuracy): 6,400 queries, fidelity 0.77, test accuracy 0.72.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from modelprove.access import LabelOnlyAccess
from modelprove.attacks.base import student_for
from modelprove.attacks._shared import check, query_labels, require_data, victim_classes
from modelprove.attacks.transfer_set import SurrogateConfig, fit, relabelled
from modelprove.core.seeding import generator
from modelprove.data.dataset import ImageDataset
from modelprove.models import Classifier

PAPER_SETTING = ("Papernot et al. 2017 (MNIST): 150 seed images, 6 rounds, lambda 0.1, 10 epochs per round (here "
                 "10 seed images per class)")

GRADIENT_CHUNK = 512


@dataclass
class PapernotConfig(SurrogateConfig):
    seed_per_class: int = 10
    rounds: int = 6
    lambda_step: float = 0.1
    tau: int = 0  # sign of λ flips every tau rounds; 0 never flips
    epochs: int = 10  # per round
    augmentation: str = "none"

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self, "seed_per_class", self.seed_per_class >= 1, "an integer >= 1 (the paper: about 15)", "10")
        check(self, "rounds", 0 <= self.rounds <= 12, "in 0..12 (each round doubles the transfer set)", "6")
        check(self, "lambda_step", 0 < self.lambda_step <= 1, "in (0, 1] (images are in [0, 1])", "0.1")
        check(self, "tau", self.tau >= 0, ">= 0 (0: never flip the sign of lambda)", "0")


def seed_set(data: ImageDataset, per_class: int, seed: int) -> torch.Tensor:
    """Rows of ``per_class`` randomly chosen attacker images of every class (fewer if a class has fewer)."""
    order = torch.randperm(len(data), generator=generator(seed))
    rows = [order[data.labels[order] == k][:per_class] for k in range(data.num_classes)]
    return torch.cat(rows).sort().values


def step_size(config: PapernotConfig, round_index: int) -> float:
    if config.tau == 0:
        return config.lambda_step
    return config.lambda_step * (-1) ** (round_index // config.tau)


def jacobian_points(substitute: Classifier, images: torch.Tensor, labels: torch.Tensor, step: float) -> torch.Tensor:
    """x + step · sign(∇_x log F(x)[O(x)]) for every uint8 image, clipped to [0, 1], back as uint8."""
    was_training = substitute.training
    substitute.eval()  # BatchNorm with running statistics: one image's step never depends on its batch-mates
    out = []
    try:
        for start in range(0, len(images), GRADIENT_CHUNK):
            x = images[start:start + GRADIENT_CHUNK].float().div(255).requires_grad_(True)
            y = labels[start:start + GRADIENT_CHUNK]
            chosen = F.log_softmax(substitute(x), dim=1).gather(1, y[:, None]).sum()
            (gradient,) = torch.autograd.grad(chosen, x)
            moved = (x.detach() + step * gradient.sign()).clamp(0, 1)
            out.append(moved.mul(255).round().to(torch.uint8))
    finally:
        substitute.train(was_training)
    return torch.cat(out)


def steal(victim: LabelOnlyAccess, attacker_data: ImageDataset | None, config: PapernotConfig):
    data = require_data(attacker_data, victim, "papernot")
    classes = victim_classes(victim, data)
    seeds = data.subset(seed_set(data, config.seed_per_class, config.seed), name=f"{data.name}:papernot-seed")
    transfer = relabelled(seeds, query_labels(victim, seeds), classes, f"{data.name}:papernot-S0")
    queries = len(seeds)
    substitute = student_for(victim, data, config.arch, config.seed)
    history = []
    for r in range(config.rounds + 1):
        record = fit(substitute, transfer, config, description=f"papernot round {r}/{config.rounds}")
        history.append({"round": r, "transfer_set": len(transfer), "final_loss": round(record.final_loss, 5),
                        "seconds": record.seconds})
        if r == config.rounds:
            break
        moved = jacobian_points(substitute, transfer.images, transfer.labels, step_size(config, r))
        # a synthetic point keeps the index of the attacker image it grew from, so it stays traceable
        new = ImageDataset(moved, transfer.labels, classes, f"{data.name}:papernot-new{r + 1}", transfer.indices)
        new = relabelled(new, query_labels(victim, new), classes, new.name)  # only the new points are sent
        queries += len(new)
        transfer = ImageDataset.concat([transfer, new], f"{data.name}:papernot-S{r + 1}")
    return substitute, {"queries": queries, "transfer_set": len(transfer), "seed_set": len(seeds), "rounds": history}
