"""Weight pruning (fully-accessible, CAE Sec. 5 / Table 2, after Zhu & Gupta 2017).

Every conv and linear weight tensor is pruned by magnitude, layer by layer, to the target ``rate``
(fraction of zeros) in ``iterations`` steps along Zhu & Gupta's cubic schedule
s_t = rate * (1 - (1 - t/n)^3) (Eq. 1 there, initial sparsity 0): large steps first, small ones as
the network has less left to lose. After every step the model is fine-tuned ``finetune_epochs``
on the attacker's labelled data with the masks in place (``torch.nn.utils.prune`` re-applies them
in every forward pass, so pruned weights stay exactly zero); ``finetune_epochs=0`` prunes in one
go without data. Biases and BatchNorm parameters are not pruned.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from modelprove.access import WHITE_BOX, WhiteBoxAccess, require_access
from modelprove.attacks._shared import check, check_training, require_data
from modelprove.data.dataset import ImageDataset
from modelprove.training import TrainConfig, train

PAPER_SETTING = ("CAE Sec. 5 / Table 2: iterative pruning (Zhu & Gupta 2017) at rates 0.7, 0.8, 0.9 on CIFAR-10, "
                 "schedule length not stated; here rate 0.8 in 5 cubic steps with 1 fine-tuning epoch after each")


@dataclass
class PruneConfig:
    """rate: target fraction of zero weights in every conv/linear layer (CAE: 0.7, 0.8, 0.9);
    iterations: pruning steps on the cubic schedule; finetune_epochs: epochs on attacker data after
    each step (0: prune only, no data); lr/batch_size/augmentation: that fine-tuning's."""

    rate: float = 0.8
    iterations: int = 5
    finetune_epochs: int = 1
    lr: float = 0.01
    batch_size: int = 128
    augmentation: str = "crop"
    seed: int = 0

    def __post_init__(self) -> None:
        check(self, "rate", 0.0 < self.rate < 1.0, "a fraction strictly between 0 and 1", "0.8")
        check(self, "iterations", self.iterations >= 1, "an integer >= 1", "5")
        check(self, "finetune_epochs", self.finetune_epochs >= 0, "an integer >= 0", "1")
        if self.finetune_epochs:
            probe = copy.copy(self)
            probe.epochs = self.finetune_epochs  # type: ignore[attr-defined]
            check_training(probe)


def schedule(rate: float, iterations: int) -> list[float]:
    """Zhu & Gupta's cubic sparsity targets after each of ``iterations`` steps, ending at ``rate``."""
    return [rate * (1 - (1 - t / iterations) ** 3) for t in range(1, iterations + 1)]


def prunable(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero entries over all conv/linear weights."""
    layers = prunable(model)
    zeros = sum(int((_effective(m) == 0).sum()) for m in layers)
    return zeros / sum(m.weight.numel() for m in layers)


def steal(victim: WhiteBoxAccess, attacker_data: ImageDataset | None, config: PruneConfig):
    require_access(victim, WHITE_BOX, "attack 'prune'")
    data = require_data(attacker_data, victim, "prune") if config.finetune_epochs else None
    suspect = copy.deepcopy(victim.model)
    layers = prunable(suspect)
    trainings = []
    for step, target in enumerate(schedule(config.rate, config.iterations)):
        for layer in layers:
            _prune_to(layer, target)
        if data is not None:
            record = train(
                suspect, data,
                TrainConfig(epochs=config.finetune_epochs, lr=config.lr, batch_size=config.batch_size,
                            augmentation=config.augmentation, seed=config.seed + step),
                description=f"prune step {step + 1}/{config.iterations} ({target:.0%}) fine-tune",
            )
            trainings.append(record.to_dict())
    for layer in layers:
        torch_prune.remove(layer, "weight")  # masks become plain zeros: the suspect is an ordinary model
    details = {
        "sparsity": round(sparsity(suspect), 4),
        "layer_sparsity": {name: round(float((m.weight == 0).float().mean()), 4)
                           for name, m in suspect.named_modules() if m in layers},
        "schedule": [round(s, 4) for s in schedule(config.rate, config.iterations)],
        "training": trainings,
    }
    if data is None:
        details["uses_data"] = False
    return suspect.eval(), details


def _prune_to(layer: nn.Module, target: float) -> None:
    """Zero the smallest-magnitude weights of ``layer`` until a ``target`` fraction is zero."""
    weight = _effective(layer)
    order = weight.abs().flatten().argsort(stable=True)  # pruned (zero) weights come first, so masks only grow
    mask = torch.ones(weight.numel())
    mask[order[: round(target * weight.numel())]] = 0
    mask = mask.view_as(weight)
    if torch_prune.is_pruned(layer):
        layer.weight_mask.copy_(mask * layer.weight_mask)  # in place: the forward pre-hook reads this buffer
        layer.weight = layer.weight_orig * layer.weight_mask  # what the hook would recompute at the next forward
    else:
        torch_prune.custom_from_mask(layer, "weight", mask)


def _effective(layer: nn.Module) -> torch.Tensor:
    """The weight the layer computes with: ``weight_orig * weight_mask`` while pruning is attached."""
    if torch_prune.is_pruned(layer):
        return (layer.weight_orig * layer.weight_mask).detach()
    return layer.weight.detach()
