"""IPGuard: fingerprinting the classification boundary (Cao, Jia, Gong, AsiaCCS 2021) — CAE's baseline.

The owner finds data points near the source model's classification boundary and keeps them with the
source's labels; a suspect whose labels on them match the source's often enough is called a copy
(Sec. 4 of IPGuard: the matching rate). CAE (Sec. 5, Fig. 4f) compares with it on retrained
surrogates vs references: ROC AUC 0.63 against CAE's 1.0.

Boundary points, as we re-implement them (the CAE authors re-implemented IPGuard too; the IPGuard
paper is not in our papers folder): start from a defender image x0 whose source label is j, pick a
class i ≠ j at random, and minimise over x in [0, 1]
    ReLU(g_j(x) − g_i(x) + k) + ReLU(max_{t∉{i,j}} g_t(x) − g_j(x)),
g the source's logits: class i must win over j by the margin k and j must stay the runner-up;
signed-gradient steps stop for a point once its loss is 0, so it sits just past the i/j boundary. The fingerprint is x with the source's label on it. Only
points the source labels i are kept. Verification is CAE's: label-only matching rate, ρ chosen from
the held-out surrogates/references trained at protection time, binomial p against their rate.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from modelprove.access import LABEL_ONLY, LabelOnlyAccess
from modelprove.core.errors import ModelproveError
from modelprove.core.progress import progress_default, task
from modelprove.core.seeding import generator
from modelprove.data.dataset import ImageDataset
from modelprove.methods import cae
from modelprove.methods.protection import ensure_writable
from modelprove.models import Classifier, predict_labels
from modelprove.training import evaluate

METHOD = "ipguard"
ACCESS = (LABEL_ONLY,)
VERIFY_OPTIONS = cae.VERIFY_OPTIONS


@dataclass
class IpguardConfig(cae.HeldOutModels):
    """IPGuard's parameters; the held-out model fields are CAE's, so both can share the models."""

    k: float = 0.5  # logit margin of the winning class over the runner-up (IPGuard's k)
    steps: int = 100
    step_size: float = 0.005  # signed-gradient step on x (points stop once past the boundary)
    n: int = 100
    rho: float | None = None
    rho_fallback: float = 0.75
    alpha: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if self.k < 0 or self.steps < 1 or self.step_size <= 0 or self.n < 1:
            raise ModelproveError(f"IpguardConfig needs k >= 0, steps >= 1, step_size > 0, n >= 1; got k={self.k}, "
                                  f"steps={self.steps}, step_size={self.step_size}, n={self.n}.")
        self.check_models()


def boundary_loss(logits: torch.Tensor, winner: torch.Tensor, runner_up: torch.Tensor, k: float) -> torch.Tensor:
    """Per example: ReLU(g_j − g_i + k) + ReLU(max_{t∉{i,j}} g_t − g_j), i = ``winner``, j = ``runner_up``."""
    g_i = logits.gather(1, winner.view(-1, 1)).squeeze(1)
    g_j = logits.gather(1, runner_up.view(-1, 1)).squeeze(1)
    others = logits.clone()
    others.scatter_(1, winner.view(-1, 1), float("-inf"))
    others.scatter_(1, runner_up.view(-1, 1), float("-inf"))
    return torch.relu(g_j - g_i + k) + torch.relu(others.max(dim=1).values - g_j)


def boundary_points(source: nn.Module, images: torch.Tensor, config: IpguardConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Points near the source's boundary between its label j on each image and a random other class i.
    Returns (points, i)."""
    rng = generator(config.seed + 3)
    with torch.no_grad():
        runner_up = source.eval()(images).argmax(dim=1)
    num_classes = source.num_classes if hasattr(source, "num_classes") else int(source(images[:1]).shape[1])
    shift = torch.randint(1, num_classes, (len(images),), generator=rng)
    winner = (runner_up + shift) % num_classes
    x = images.clone()
    with cae._frozen([source]), task("IPGuard boundary points", config.steps, enabled=progress_default()) as bar:
        for _ in range(config.steps):
            x.requires_grad_(True)
            loss = boundary_loss(source(x), winner, runner_up, config.k)
            (gradient,) = torch.autograd.grad(loss.sum(), x)
            # A point whose loss reached 0 stops where it is: just past the boundary, not beyond it.
            active = (loss.detach() > 0).float().view(-1, *[1] * (x.dim() - 1))
            x = (x.detach() - config.step_size * active * gradient.sign()).clamp(0, 1)
            bar.advance()
    return x.detach(), winner


def build(defender: ImageDataset, test: ImageDataset, out: str | Path, config: IpguardConfig | None = None, *,
            force: bool = False, model: str | Path | Classifier | None = None,
            defender_models: cae.DefenderModels | None = None) -> cae.CaeProtection:
    """Fingerprint the source ``model`` with n boundary points; choose ρ on held-out models; write ``out``."""
    config = config or IpguardConfig()
    out = Path(out)
    ensure_writable(out, force)
    source, source_info = cae.load_source(model, defender)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    models, records = cae.train_defender_models(source, defender, test, config, defender_models)
    timings["train_held_out_models"] = time.perf_counter() - start

    start = time.perf_counter()
    rows = torch.randperm(len(defender), generator=generator(config.seed + 1))[: 2 * config.n]
    points, winner = boundary_points(source, defender.as_float(rows), config)
    labels = predict_labels(source, points)
    kept = torch.nonzero(labels == winner).flatten()[: config.n]
    if len(kept) < 1:
        raise ModelproveError("no boundary point reached the chosen class.", fix="raise steps or step_size.")
    fingerprint, targets = points[kept], labels[kept]
    timings["boundary_points"] = time.perf_counter() - start

    surrogate_scores, reference_scores, rho = cae.held_out_threshold(models, fingerprint, targets, config.rho,
                                                                    config.rho_fallback)
    results = {
        "source_test_accuracy": evaluate(source, test),
        "fingerprint_size": int(len(kept)),
        "reached_boundary": int((labels == winner).sum()),
        "k": config.k,
        "rho": float(rho),
        "held_out_surrogate_match": surrogate_scores,
        "held_out_reference_match": reference_scores,
        "references_rate": cae.references_rate(reference_scores, len(kept), defender.num_classes),
        "training": records,
        "seconds": {k: round(v, 2) for k, v in timings.items()},
    }
    cae.write_fingerprint_protection(out, METHOD, {**asdict(config), **source_info}, source, defender, test, results,
                                     {"images": fingerprint, "targets": targets, "origins": defender.indices[rows[kept]]},
                                     force=force)
    return cae.CaeProtection(out, source, fingerprint, targets, models, results)


def open_protection(directory) -> cae.OpenedFingerprint:
    """Load an IPGuard protection for verification (hash-checked)."""
    return cae.open_fingerprint(directory, METHOD, IpguardConfig)


class Ipguard(cae.FingerprintMethod):
    name = METHOD
    config = IpguardConfig
    description = "IPGuard: points near the source's classification boundary; matching rate, label-only (Cao et al. 2021)"
    effect_name = "matching rate"

    def build(self, defender, test, out, config, *, force=False, **inputs):
        return build(defender, test, out, config, force=force, **inputs)

    def open(self, directory):
        return open_protection(directory)


IPGUARD = Ipguard()
protect = IPGUARD.protect
verify = IPGUARD.verify
