"""Saliency-based backdoor defences against ownership evidence (MOVE TPAMI Sec. 7.3.2, Fig. 7).

Grad-CAM (Selvaraju et al., ICCV 2017, Eq. 1-2): for a class c and a convolutional layer with feature
maps A^k, alpha_k = mean_ij dy^c / dA^k_ij and L^c = ReLU(sum_k alpha_k A^k), upsampled bilinearly to
the input. By default c is the model's own prediction and the layer is the last nn.Conv2d.

The defences MOVE cites (SentiNet, Februus, NeuronInspect; its refs. 44-46) "generate the saliency map
of each sample and then calculate trigger regions based on the intersection of all saliency maps", then
remove that region. :func:`trigger_region` is that region: the pixels in the top ``top_fraction`` of
the map in at least ``agreement`` of the images (a strict intersection of many maps is usually
empty), grown by ``grow`` pixels (a map of a strided layer places a small trigger only to within its
cells' receptive field: on cnn_small's 14x14 map, BadNets' 3x3 corner square peaks 2-3 pixels up and
left of it). :func:`purifying_access` is a thief's server that fills the region with ``fill`` in every
query before its model answers — or, with no region given, each query's own top-saliency pixels
(Februus' per-input removal) — so a verifier's black-box evidence can be measured with and without it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modelprove.access import BlackBoxAccess
from modelprove.core.errors import ModelproveError
from modelprove.models import Classifier, predict_proba


@dataclass
class SaliencyConfig:
    """top_fraction: share of each map's pixels counted salient; agreement: share of the images whose
    salient pixels a pixel must be among to belong to the trigger region; fill: the value written into
    the removed region (Fashion-MNIST's background is black); layer: the module Grad-CAM reads, by name
    in ``model.named_modules()`` (empty: the last nn.Conv2d); grow: pixels the trigger region is grown
    by in every direction."""

    top_fraction: float = 0.05
    agreement: float = 0.5
    fill: float = 0.0
    layer: str = ""
    grow: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.top_fraction < 1.0:
            raise ModelproveError(f"SaliencyConfig.top_fraction must be in (0, 1), got {self.top_fraction}.",
                                  fix="use a share of the image such as 0.05.")
        if not 0.0 < self.agreement <= 1.0:
            raise ModelproveError(f"SaliencyConfig.agreement must be in (0, 1], got {self.agreement}.",
                                  fix="use a share of the images such as 0.5 (1: a strict intersection).")
        if not 0.0 <= self.fill <= 1.0:
            raise ModelproveError(f"SaliencyConfig.fill must be a pixel value in [0, 1], got {self.fill}.")
        if self.grow < 0:
            raise ModelproveError(f"SaliencyConfig.grow must be >= 0 pixels, got {self.grow}.")


def cam_layer(model: nn.Module, name: str = "") -> nn.Module:
    """The module named ``name`` in ``model``, or (empty) its last nn.Conv2d."""
    modules = dict(model.named_modules())
    if name:
        if name not in modules:
            raise ModelproveError(f"the model has no module {name!r} for Grad-CAM.",
                                  fix=f"name one of {', '.join(n for n in modules if n)}, or leave layer empty.")
        return modules[name]
    convolutions = [m for m in modules.values() if isinstance(m, nn.Conv2d)]
    if not convolutions:
        raise ModelproveError(f"Grad-CAM needs a convolutional layer, and {type(model).__name__} has none.",
                              fix="name a layer with spatial feature maps (SaliencyConfig.layer).")
    return convolutions[-1]


def grad_cam(model: nn.Module, images: Tensor, classes: Tensor | None = None, *, layer: str = "",
             batch_size: int = 256) -> Tensor:
    """Grad-CAM maps (N, H, W) of float ``images`` (N, C, H, W) in [0, 1], non-negative, at the input's
    resolution; ``classes`` (N,) are the classes explained (default: the model's predictions)."""
    module = cam_layer(model, layer)
    was_training = model.training
    model.eval()
    captured: list[Tensor] = []
    hook = module.register_forward_hook(lambda _m, _i, output: captured.append(output))
    maps = []
    try:
        with torch.enable_grad():
            for start in range(0, len(images), batch_size):
                captured.clear()
                batch = images[start:start + batch_size]
                logits = model(batch)
                chosen = logits.argmax(1) if classes is None else classes[start:start + batch_size].long()
                activations = captured[-1]
                # Rows are independent in eval mode, so one backward pass gives every row its own gradient.
                gradients, = torch.autograd.grad(logits.gather(1, chosen.view(-1, 1)).sum(), activations)
                weights = gradients.mean(dim=(2, 3), keepdim=True)
                cam = F.relu((weights * activations).sum(dim=1, keepdim=True)).detach()
                maps.append(F.interpolate(cam, size=batch.shape[-2:], mode="bilinear", align_corners=False)[:, 0])
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(maps).clamp_min(0) if maps else images.new_zeros((0, *images.shape[-2:]))


def mass_share(maps: Tensor, region: Tensor) -> Tensor:
    """Each map's share of its mass inside the boolean (H, W) ``region`` (a map of zeros: 0)."""
    total = maps.flatten(1).sum(1)
    inside = (maps * region.to(maps.dtype)).flatten(1).sum(1)
    return torch.where(total > 0, inside / total.clamp_min(1e-12), torch.zeros_like(total))


def salient_pixels(maps: Tensor, top_fraction: float) -> Tensor:
    """Boolean (N, H, W): each map's ``top_fraction`` highest pixels (at least one)."""
    flat = maps.flatten(1)
    k = max(1, round(top_fraction * flat.shape[1]))
    chosen = torch.zeros_like(flat, dtype=torch.bool)
    chosen.scatter_(1, flat.topk(k, dim=1).indices, True)
    return chosen.view_as(maps)


def trigger_region(model: nn.Module, images: Tensor, config: SaliencyConfig | None = None) -> Tensor:
    """Boolean (H, W): pixels salient (Grad-CAM, top ``top_fraction``) in at least ``agreement`` of
    ``images``, grown by ``grow`` pixels — the region a saliency defence removes as the trigger."""
    config = config or SaliencyConfig()
    salient = salient_pixels(grad_cam(model, images, layer=config.layer), config.top_fraction)
    region = (salient.float().mean(0) >= config.agreement - 1e-9).float()
    if config.grow:
        region = F.max_pool2d(region[None, None], 2 * config.grow + 1, stride=1, padding=config.grow)[0, 0]
    return region.bool()


def remove_region(images: Tensor, region: Tensor, fill: float) -> Tensor:
    """``images`` (N, C, H, W) with ``region`` — (H, W) shared, or (N, H, W) per image — set to ``fill``."""
    mask = region.to(torch.bool)
    mask = mask.view(1, 1, *mask.shape) if mask.dim() == 2 else mask.unsqueeze(1)
    return torch.where(mask, torch.full_like(images, fill), images)


def purifying_access(model: Classifier, config: SaliencyConfig | None = None, region: Tensor | None = None, *,
                     name: str = "suspect behind a saliency defence") -> BlackBoxAccess:
    """A black-box server for ``model`` that removes ``region`` (H, W) from every query, or — with no
    region — each query's own top ``top_fraction`` Grad-CAM pixels, before answering. Queries are counted
    as any black-box access counts them."""
    config = config or SaliencyConfig()
    if region is not None and tuple(region.shape) != tuple(model.input_size):
        raise ModelproveError(f"the trigger region has shape {tuple(region.shape)} but {name} takes "
                              f"{tuple(model.input_size)} images.")

    def answer(batch: Tensor) -> Tensor:
        removed = region if region is not None else salient_pixels(grad_cam(model, batch, layer=config.layer),
                                                                   config.top_fraction)
        return predict_proba(model, remove_region(batch, removed, config.fill))

    return BlackBoxAccess(answer, num_classes=model.num_classes, input_shape=(model.in_channels, *model.input_size),
                          name=name, arch=model.arch)
