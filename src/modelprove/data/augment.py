"""Batch augmentations on float images (N, C, H, W) in [0, 1], vectorised over the batch.

Random ones take a ``torch.Generator`` (on the CPU), so a seeded run draws the same crops and
flips every time, whatever else draws random numbers meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Augmentation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def random_crop(x: torch.Tensor, padding: int, gen: torch.Generator) -> torch.Tensor:
    """Zero-pad each side by ``padding``, then crop every image back to (H, W) at its own offset."""
    _check_batch(x)
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if padding == 0:
        return x.clone()
    n, c, h, w = x.shape
    k = 2 * padding + 1
    padded = F.pad(x, (padding, padding, padding, padding))
    # A view of every (k x k) crop position of every image; one indexing op copies the chosen
    # window per image (several times faster on CPU than a gather over flattened pixels).
    sn, sc, sh, sw = padded.stride()
    windows = padded.as_strided((n, k, k, c, h, w), (sn, sh, sw, sc, sh, sw))
    offsets = torch.randint(0, k, (2, n), generator=gen).to(x.device)
    return windows[torch.arange(n, device=x.device), offsets[0], offsets[1]]


def random_hflip(x: torch.Tensor, gen: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``."""
    _check_batch(x)
    flip = (torch.rand(x.shape[0], generator=gen) < p).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def hflip(x: torch.Tensor) -> torch.Tensor:
    """Mirror every image left-right."""
    return x.flip(-1)


def translate(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Shift every image by ``dx`` pixels right and ``dy`` pixels down (negative: left / up), zero fill."""
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    if abs(dx) >= w or abs(dy) >= h:
        return out
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[
        ..., max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


def cutmix(x: torch.Tensor, other: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """CutMix (Yun et al., ICCV 2019) of image pairs: each image of ``x`` with a box of the same row of
    ``other`` pasted in. The box covers a share 1 − λ of the area, λ ~ U(0, 1) (CutMix's Beta(1, 1)),
    its centre uniform over the image, clipped at the borders."""
    _check_batch(x)
    if other.shape != x.shape:
        raise ValueError(f"cutmix pairs images of one shape, got {tuple(x.shape)} and {tuple(other.shape)}")
    n, _, h, w = x.shape
    side = (1 - torch.rand(n, generator=gen)).sqrt()  # the box's share of each side
    half_h, half_w = (side * h).long() // 2, (side * w).long() // 2
    cy, cx = torch.randint(0, h, (n,), generator=gen), torch.randint(0, w, (n,), generator=gen)
    ys, xs = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    box = ((ys >= (cy - half_h).view(n, 1, 1)) & (ys < (cy + half_h).view(n, 1, 1))
           & (xs >= (cx - half_w).view(n, 1, 1)) & (xs < (cx + half_w).view(n, 1, 1)))
    return torch.where(box[:, None].to(x.device), other, x)


def crop_padding(height: int) -> int:
    """The trainer's crop padding: about an eighth of the side, even, at least 1.

    2 for 28 px (MNIST's usual) and 4 for 32 px (CIFAR's usual); plain ``height // 8`` would give
    3 for 28 px.
    """
    return max(1, (height // 16) * 2)


def _none(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return x


def _crop(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return random_crop(x, crop_padding(x.shape[-2]), gen)


def _crop_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return random_hflip(_crop(x, gen), gen)


AUGMENTATIONS: dict[str, Augmentation] = {"none": _none, "crop": _crop, "crop_flip": _crop_flip}


def _check_batch(x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"expected a batch (N, C, H, W), got shape {tuple(x.shape)}")
