"""The ownership meta-classifier C (MOVE Sec. 5.3): victim-like (+1) vs benign (-1) feature vectors.

A small MLP with two output logits; the victim probability is one softmax of them (the public
reference applied softmax twice, which squashes every probability towards 0.5).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

from modelprove.core.errors import ModelproveError, ProtectionError
from modelprove.core.seeding import generator
from modelprove.methods.protection import Protection

VICTIM = 1  # class index of "contains the external feature"


@dataclass
class MetaClassifierConfig:
    hidden: int = 64
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    dropout: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.hidden < 1 or self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ModelproveError(f"invalid meta-classifier config: {asdict(self)}.")


class MetaClassifier(nn.Module):
    def __init__(self, in_features: int, hidden: int = 64, dropout: float = 0.2):
        super().__init__()
        self.in_features = in_features
        self.hidden = hidden
        # Features are standardised with the training set's statistics (saved with the weights):
        # per-layer sign fractions differ between models by a few hundredths.
        self.register_buffer("feature_mean", torch.zeros(in_features))
        self.register_buffer("feature_std", torch.ones(in_features))
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 2)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net((features.float() - self.feature_mean) / self.feature_std)

    @torch.no_grad()
    def victim_probability(self, features: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """P[C(features) = victim] for each row."""
        if features.ndim != 2 or features.shape[1] != self.in_features:
            raise ModelproveError(
                f"the meta-classifier takes {self.in_features} features per sample, got shape {tuple(features.shape)}."
            )
        self.eval()
        out = [
            F.softmax(self(features[i : i + batch_size]), dim=1)[:, VICTIM]
            for i in range(0, len(features), batch_size)
        ]
        return torch.cat(out)


def train_meta_classifier(
    victim_features: torch.Tensor, benign_features: torch.Tensor, config: MetaClassifierConfig
) -> tuple[MetaClassifier, dict]:
    """Fit C on {(g_V, +1)} ∪ {(g_B, -1)}; returns C and its training accuracy record."""
    if victim_features.shape[1] != benign_features.shape[1]:
        raise ModelproveError("victim and benign features differ in length.")
    features = torch.cat([victim_features, benign_features])
    targets = torch.cat(
        [torch.full((len(victim_features),), VICTIM), torch.full((len(benign_features),), 1 - VICTIM)]
    ).long()
    rng = generator(config.seed)
    torch.manual_seed(config.seed)
    model = MetaClassifier(features.shape[1], config.hidden, config.dropout)
    as_float = features.float()
    model.feature_mean.copy_(as_float.mean(dim=0))
    std = as_float.std(dim=0)
    # A feature constant in training is centred but not scaled, so a suspect that differs there
    # cannot produce an arbitrarily large input.
    model.feature_std.copy_(torch.where(std < 1e-3, torch.ones_like(std), std))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    # Balance the two classes: several benign models may contribute negatives.
    counts = torch.bincount(targets, minlength=2).float()
    class_weight = counts.sum() / (2 * counts)
    model.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(features), generator=rng)
        for start in range(0, len(order), config.batch_size):
            index = order[start : start + config.batch_size]
            loss = F.cross_entropy(model(features[index]), targets[index], weight=class_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    probability = model.victim_probability(features)
    accuracy = ((probability > 0.5).long() == targets).float().mean().item()
    return model, {"train_accuracy": accuracy, "train_samples": len(features), "in_features": features.shape[1]}


def load_meta_classifier(protection: Protection, name: str) -> MetaClassifier:
    """A trained meta-classifier (MOVE's C, Dataset Inference's regressor) from the protection's file
    ``name``, in eval mode; its sizes are read from the saved first layer."""
    state = load_file(str(protection.path(name)))
    weight = state.get("net.0.weight")
    if weight is None:
        raise ProtectionError(f"{name} has no 'net.0.weight'.", path=protection.directory)
    meta = MetaClassifier(weight.shape[1], weight.shape[0])
    meta.load_state_dict(state)
    return meta.eval()
