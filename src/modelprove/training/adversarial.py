"""Projected gradient descent (PGD, Madry et al. 2018) in the L-inf ball, on images in [0, 1].

Shared by the adversarial-training extraction attack (CAE Sec. 5: adversarial training removes
the fingerprint) and by anything else that needs untargeted adversarial examples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from modelprove.core.errors import ModelproveError


def pgd(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    step: float,
    steps: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Images within ``eps`` (L-inf) of ``images`` and inside [0, 1] that maximise the cross-entropy
    of ``model`` at ``labels``: ``steps`` signed-gradient steps of size ``step``, each followed by a
    projection onto the eps-ball and [0, 1].

    With a ``generator`` the search starts at a uniformly random point of the ball (Madry et al.);
    without one it starts at the images. The model runs in eval mode (BatchNorm on its running
    statistics, so one image's perturbation does not depend on its batch-mates) and its mode is
    restored; only the images receive gradients, never the weights.
    """
    if eps < 0:
        raise ModelproveError(f"pgd: eps must be >= 0 (an L-inf radius on [0, 1] images); got {eps}.")
    if step <= 0 or steps < 1:
        raise ModelproveError(f"pgd: step must be > 0 and steps >= 1; got step={step}, steps={steps}.")
    clean = images.detach()
    low, high = (clean - eps).clamp(min=0), (clean + eps).clamp(max=1)
    if generator is not None:
        noise = torch.rand(clean.shape, generator=generator).to(clean.device)
        x = low + noise * (high - low)
    else:
        x = clean.clone()
    was_training = model.training
    model.eval()
    try:
        for _ in range(steps):
            x.requires_grad_(True)
            loss = F.cross_entropy(model(x), labels)
            (gradient,) = torch.autograd.grad(loss, x)
            x = torch.maximum(torch.minimum(x.detach() + step * gradient.sign(), high), low)
    finally:
        model.train(was_training)
    return x.detach()
