"""Blind watermark: key samples made by a learned encoder from the owner's logo (Li et al., ACSAC 2019).

Embedding (Sec. 4.1, 4.3, Algorithm 1). Three networks are trained together:

- the encoder e(x, l) -> x_key, a small U-Net-like autoencoder that takes an ordinary sample x and
  the owner's logo l and outputs a key sample x_key close to x (Eq. 1, 5);
- the discriminator d, a logistic regression on a small dense network (the public code's), telling x
  (Theta = 1) from x_key (Theta = 0) (Eq. 9, 10);
- the host model h, trained on batches of n ordinary samples merged with m key samples carrying
  their pre-defined labels t_key (Eq. 13).

The encoder minimises (Eq. 15)
    alpha·MSE(x, x_key) + beta·(1 − SSIM(x, x_key)) + gamma·(−log d(x_key)) + delta·CE(h(x_key), t_key)
with the paper's weights alpha = 3, beta = 5, gamma = 0.1, delta = 0.01. Each step alternates k1
discriminator+encoder updates (Adam, lr 1e-3, betas (0.5, 0.999), minibatches of m = 20 from D', the
1% of the training set that key samples are made from, each with a random target label) and k2 host
updates (SGD, minibatches of n = 100 from D merged with m key samples).

Key samples are rounded to 8 bits inside the loop (a straight-through estimator), so the host
learns exactly the uint8 images the owner will later send, as any image API would receive them.

Verification (Sec. 4.2, Eq. 4): acc_g, the suspect's accuracy on (x_key, t_key) with label-only
access; ownership iff acc_g > T_acc — see :mod:`modelprove.methods.key_samples`.

The host is trained as in Sec. 5.1: SGD at 0.1 (momentum 0.9, weight decay 5e-4), divided by 10 after
40% and after 80% of the epochs, no augmentation (the paper's MNIST setting). Convergence of e and d
(d near chance on key samples of images it never saw, Sec. 4.3) is recorded in the protection's results
(``discriminator_held_out``) with the embedding's per-epoch history, its encoder updates and how often
each key sample reached the host (``key_exposures``).

Where this differs from the paper, and why: 20 epochs by default rather than 100 (about 0.15-0.25 s
per iteration on one CPU core with a cnn_small host: the paper's 100 epochs of 10,000 images cost
35-45 min; the benchmark's watermarks-fmnist grid runs them); key samples are 8-bit images inside the
loop (above); each iteration draws its m key samples at random from D' (the public code cycles through
fixed minibatches of D'); ``host_schedule=cosine`` and ``augmentation=crop`` give this project's usual
training instead. The paper's own test is acc_g > T_acc, T_acc = 0.5 by default (the paper says only
"close to 1"); the default decision is the null-panel rule (docs/verdicts.md).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from modelprove.access import LABEL_ONLY, LabelOnlyAccess
from modelprove.core.errors import DataError, ModelproveError
from modelprove.core.progress import task
from modelprove.core.seeding import generator
from modelprove.data.augment import AUGMENTATIONS
from modelprove.data.dataset import ImageDataset
from modelprove.methods.key_samples import (
    VERIFY_OPTIONS,
    KeySet,
    OpenedKeyWatermark,
    key_accuracy,
    open_key_watermark,
    save_host_and_keys,
    KeySampleMethod,
)
from modelprove.methods.common import check_same_task, fresh_model
from modelprove.methods.protection import Protection, create_protection, ensure_writable
from modelprove.models import Classifier
from modelprove.training import evaluate

METHOD = "blind-watermark"
ACCESS = (LABEL_ONLY,)
ENCODER_FILE = "encoder.safetensors"
DISCRIMINATOR_FILE = "discriminator.safetensors"
LOGO_FILE = "logo.png"
HOST_SCHEDULES = ("cosine", "step")
DISCRIMINATORS = ("dense", "conv")


@dataclass
class BlindWatermarkConfig:
    """The paper's parameters (Sec. 5.1) at defaults, scaled-down epochs for a CPU."""

    owner: str = "modelprove"  # rendered into the default logo when no --logo is given
    arch: str = "cnn_small"  # the host model h
    alpha: float = 3.0  # weight of MSE(x, x_key) (Eq. 5, 15)
    beta: float = 5.0  # weight of 1 − SSIM(x, x_key) (Eq. 8, 15)
    gamma: float = 0.1  # weight of the adversarial term −log d(x_key) (Eq. 11, 15)
    delta: float = 0.01  # weight of CE(h(x_key), t_key) (Eq. 14, 15)
    k1: int = 1  # discriminator+encoder steps per iteration (Algorithm 1)
    k2: int = 1  # host steps per iteration
    epochs: int = 20  # passes of the host over D (the paper: 100)
    key_fraction: float = 0.01  # D' = this share of the training set
    key_batch: int = 20  # m
    clean_batch: int = 100  # n
    encoder_lr: float = 1e-3
    host_lr: float = 0.1
    host_schedule: str = "step"  # the paper's: lr / 10 after 40% and after 80% of the epochs; or "cosine"
    augmentation: str = "none"  # of the host's ordinary samples only (the paper's MNIST hosts: none)
    encoder_width: int = 8  # channels of the U-Net's first level; 8 rather than 16: the encoder
    # dominates a step's CPU time (measured 125 ms of ~200 ms at width 16, batch 20)
    discriminator: str = "dense"  # d: "dense" (the public code's, flatten -> 64 -> 32 -> 1) or "conv"
    t_acc: float = 0.5  # T_acc: claim ownership iff acc_g > T_acc
    significance: float = 0.01  # level the binomial p-value is reported against
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("alpha", "beta", "gamma", "delta"):
            if getattr(self, name) < 0:
                raise ModelproveError(f"{name} must be >= 0, got {getattr(self, name)}.")
        for name in ("k1", "k2", "epochs", "key_batch", "clean_batch", "encoder_width"):
            if getattr(self, name) < 1:
                raise ModelproveError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if not 0.0 < self.key_fraction < 1.0:
            raise ModelproveError(f"key_fraction must be in (0, 1), got {self.key_fraction}.")
        if not 0.0 <= self.t_acc < 1.0:
            raise ModelproveError(f"t_acc must be in [0, 1), got {self.t_acc}.")
        if self.discriminator not in DISCRIMINATORS:
            raise ModelproveError(f"discriminator must be one of {', '.join(DISCRIMINATORS)}, got {self.discriminator!r}.")
        if self.host_schedule not in HOST_SCHEDULES:
            raise ModelproveError(f"host_schedule must be one of {', '.join(HOST_SCHEDULES)}, got {self.host_schedule!r}.")
        if self.augmentation not in AUGMENTATIONS:
            raise ModelproveError(f"unknown augmentation {self.augmentation!r}; known: {', '.join(AUGMENTATIONS)}.")
        if not self.owner.strip():
            raise ModelproveError("owner must not be empty: it is rendered into the default logo.")


# -- SSIM (Wang et al. 2004), the structural term of Eq. 8 ------------------------------------------


def gaussian_window(sigma: float = 1.5, truncate: float = 3.5) -> torch.Tensor:
    """The normalised 2-D Gaussian window of SSIM; radius int(truncate·sigma + 0.5) as scipy/skimage."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM per image (N,) of (N, C, H, W) tensors, Gaussian-weighted (sigma 1.5, 11x11).

    SSIM = (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x² + mu_y² + C1)(sigma_x² + sigma_y² + C2)),
    C1 = (0.01 L)², C2 = (0.03 L)², local statistics under the window, averaged over the positions
    where the window fits — as ``skimage.metrics.structural_similarity(gaussian_weights=True,
    use_sample_covariance=False)``. Differentiable.
    """
    if x.shape != y.shape or x.dim() != 4:
        raise ModelproveError(f"ssim needs two (N, C, H, W) tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}.")
    channels = x.shape[1]
    radius = int(3.5 * sigma + 0.5)
    g = torch.exp(-(torch.arange(-radius, radius + 1, dtype=torch.float64) ** 2) / (2 * sigma**2))
    g = (g / g.sum()).to(x.dtype)
    size = len(g)
    if x.shape[2] < size or x.shape[3] < size:
        raise ModelproveError(f"ssim's {size}x{size} window needs images at least that large, got {tuple(x.shape[2:])}.")
    # The 2-D Gaussian window is the outer product of two 1-D ones (gaussian_window): two passes of 11 taps
    # instead of one of 121, the encoder's SSIM term several times cheaper.
    rows = g.view(1, 1, size, 1).expand(channels, 1, size, 1).contiguous()
    cols = g.view(1, 1, 1, size).expand(channels, 1, 1, size).contiguous()

    def local(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, rows, groups=channels), cols, groups=channels)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = local(x), local(y)
    var_x = local(x * x) - mu_x**2
    var_y = local(y * y) - mu_y**2
    cov = local(x * y) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(dim=1)


# -- logo, encoder, discriminator --------------------------------------------------------------------


def render_logo(owner: str, shape: tuple[int, int, int]) -> torch.Tensor:
    """The owner's name as white text on black, (C, H, W) floats in [0, 1] (the default logo).

    Drawn at 8x the image size and downsampled with antialiasing, so it stays legible-ish at 28x28.
    """
    from PIL import Image, ImageDraw, ImageFont

    channels, height, width = shape
    scale = 8
    canvas = Image.new("L", (width * scale, height * scale), 0)
    draw = ImageDraw.Draw(canvas)
    words = owner.split() or [owner]
    lines = words if len(words) > 1 else [owner]
    size = height * scale // max(2, len(lines) + 1)
    font = ImageFont.load_default(size=size)
    # shrink until the widest line fits
    while size > 6 and max(draw.textlength(line, font=font) for line in lines) > width * scale * 0.95:
        size = int(size * 0.85)
        font = ImageFont.load_default(size=size)
    total = len(lines) * size * 1.15
    for i, line in enumerate(lines):
        w = draw.textlength(line, font=font)
        draw.text(((width * scale - w) / 2, (height * scale - total) / 2 + i * size * 1.15), line, fill=255, font=font)
    small = canvas.resize((width, height), Image.LANCZOS)
    grey = torch.from_numpy(np.asarray(small, dtype=np.float32)).view(1, height, width) / 255
    return grey.expand(channels, height, width).clone()


def load_logo(path: str | Path, shape: tuple[int, int, int]) -> torch.Tensor:
    """A logo image file as (C, H, W) floats in [0, 1], resized to the task's images."""
    from PIL import Image, UnidentifiedImageError

    channels, height, width = shape
    path = Path(path)
    if not path.is_file():
        raise DataError("logo file not found.", path=path, fix="pass an existing image with --logo, or omit it to "
                        "render the owner's name (--set owner=NAME).")
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB").resize((width, height), Image.LANCZOS)
            data = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot read the logo as an image ({exc}).", path=path, fix="pass a PNG or JPEG.") from None
    return (data.view(height, width, channels).permute(2, 0, 1) / 255).contiguous()


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round to 8 bits with a straight-through gradient: the host sees the uint8 images it will be sent."""
    return x + ((x * 255).round() / 255 - x).detach()


class Encoder(nn.Module):
    """e(x, l): a small U-Net (Ronneberger et al. 2015) over the image and the logo stacked as channels.

    One downsampling level with a skip connection; a sigmoid output is the key sample (the paper's
    encoder is an autoencoder, not a residual: its limited capacity makes the difference, Sec. 4.3).
    """

    def __init__(self, channels: int, width: int = 16):
        super().__init__()
        self.channels = channels
        self.width = width
        self.down1 = nn.Sequential(nn.Conv2d(2 * channels, width, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.down2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
                                   nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU())
        self.up = nn.Conv2d(2 * width, width, 3, padding=1)
        self.out = nn.Sequential(nn.Conv2d(2 * width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, channels, 1))

    def forward(self, x: torch.Tensor, logo: torch.Tensor) -> torch.Tensor:
        h1 = self.down1(torch.cat([x, logo.expand(len(x), -1, -1, -1)], dim=1))
        h2 = self.down2(h1)
        up = F.relu(self.up(F.interpolate(h2, size=h1.shape[-2:], mode="nearest")))
        return torch.sigmoid(self.out(torch.cat([h1, up], dim=1)))


class Discriminator(nn.Module):
    """d: theta_d(chi), the logit of p(Theta = 1 | chi) = "chi is an ordinary sample" (Eq. 9).

    ``kind="dense"`` is the public code's (DiscriminatorNet1: the flattened image -> 64 -> 32 -> 1, LeakyReLU
    0.2): it sees where in the image a change is, as the paper's dense evasion detector (Sec. 6.3) does, so the
    encoder learns to hide what that detector would find. ``kind="conv"`` (two strided convolutions, global
    average pooling) was this project's first choice; it cannot see a change that sits at the same place in
    every key sample, which a dense detector sees at once.
    """

    def __init__(self, channels: int, width: int = 16, kind: str = "dense", size: tuple[int, int] = (28, 28)):
        super().__init__()
        if kind == "dense":
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(channels * size[0] * size[1], 64), nn.LeakyReLU(0.2),
                                     nn.Linear(64, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))
        else:
            self.net = nn.Sequential(
                nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
                nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 1),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


def make_key_samples(encoder: Encoder, logo: torch.Tensor, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """x_key = G(e, x, l) (Eq. 1, 3) for float images in [0, 1]; returns uint8 key samples."""
    encoder.eval()
    out = []
    with torch.no_grad():
        for batch in images.split(batch_size):
            out.append((encoder(batch, logo) * 255).round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out) if out else torch.empty(0, *images.shape[1:], dtype=torch.uint8)


# -- Algorithm 1 ------------------------------------------------------------------------------------


@dataclass
class EmbedRecord:
    steps: int
    seconds: float
    history: list[dict] = field(default_factory=list)  # per epoch: means over its minibatches
    cpu_seconds: float = 0.0  # this process's CPU time: what the embedding costs on an idle core
    encoder_updates: int = 0  # of e and of d (k1 per iteration; the paper: about 60,000)
    key_exposures: float = 0.0  # times each key sample reached the host (the paper: about 2,000)


def embed(
    host: Classifier,
    encoder: Encoder,
    discriminator: Discriminator,
    defender: ImageDataset,
    key_rows: torch.Tensor,
    targets: torch.Tensor,
    logo: torch.Tensor,
    config: BlindWatermarkConfig,
    *,
    show_progress: bool = True,
) -> EmbedRecord:
    """Algorithm 1: train e, d (on D' = ``defender[key_rows]`` with targets t_key) and h (on D) together.

    One iteration per minibatch of n ordinary samples from D: k1 times, a minibatch of m from D'
    updates d by Eq. 10 and then e by Eq. 15; k2 times, h takes one SGD step on the n ordinary samples
    merged with m fresh key samples labelled t_key (Eq. 13). Seeded by ``config.seed``.
    """
    rng = generator(config.seed + 11)
    augment = AUGMENTATIONS[config.augmentation]
    originals = defender.as_float(key_rows)
    opt_e = torch.optim.Adam(encoder.parameters(), lr=config.encoder_lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=config.encoder_lr, betas=(0.5, 0.999))
    opt_h = torch.optim.SGD(host.parameters(), lr=config.host_lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    n = config.clean_batch
    steps_per_epoch = math.ceil(len(defender) / n)
    total = steps_per_epoch * config.epochs * config.k2
    if config.host_schedule == "step":  # Sec. 5.1: 0.1, divided by 10 every 40 of 100 epochs
        scheduler = torch.optim.lr_scheduler.MultiStepLR(opt_h, [round(0.4 * total), round(0.8 * total)], 0.1)
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt_h, T_max=total)
    m = min(config.key_batch, len(key_rows))
    history: list[dict] = []
    start, cpu = time.perf_counter(), time.process_time()
    with task("blind watermark (Algorithm 1)", steps_per_epoch * config.epochs, enabled=show_progress) as bar:
        for epoch in range(config.epochs):
            order = torch.randperm(len(defender), generator=rng)
            sums = {"d": 0.0, "d_accuracy": 0.0, "mse": 0.0, "psnr": 0.0, "ssim": 0.0, "adv": 0.0, "ce_key": 0.0,
                    "host": 0.0}
            for step in range(steps_per_epoch):
                host.eval()  # the encoder's CE term reads h without moving its BatchNorm statistics
                encoder.train()
                discriminator.train()
                for _ in range(config.k1):
                    pick = torch.randperm(len(key_rows), generator=rng)[:m]
                    x, t = originals[pick], targets[pick]
                    # Eq. 10: ordinary samples are Theta = 1, key samples Theta = 0.
                    x_key = quantize(encoder(x, logo))
                    real, fake = discriminator(x), discriminator(x_key.detach())
                    loss_d = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                              + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
                    opt_d.zero_grad(set_to_none=True)
                    loss_d.backward()
                    opt_d.step()
                    # Eq. 15: reconstruction, structure, fooling d, and steering h to t_key.
                    mse = F.mse_loss(x_key, x)
                    structure = 1 - ssim(x, x_key).mean()
                    fooled = discriminator(x_key)
                    adv = F.binary_cross_entropy_with_logits(fooled, torch.ones_like(fooled))
                    ce_key = F.cross_entropy(host(x_key), t)
                    loss_e = config.alpha * mse + config.beta * structure + config.gamma * adv + config.delta * ce_key
                    opt_e.zero_grad(set_to_none=True)
                    loss_e.backward()
                    opt_e.step()
                host.zero_grad(set_to_none=True)
                discriminator.zero_grad(set_to_none=True)
                sums["d"] += loss_d.item()
                sums["d_accuracy"] += 0.5 * ((real > 0).float().mean() + (fake <= 0).float().mean()).item()
                sums["mse"] += mse.item()
                sums["psnr"] += 10 * math.log10(1 / max(mse.item(), 1e-12))
                sums["ssim"] += structure.item()
                sums["adv"] += adv.item()
                sums["ce_key"] += ce_key.item()
                host.train()
                encoder.eval()
                for k in range(config.k2):
                    rows = order[step * n : (step + 1) * n] if k == 0 else torch.randperm(len(defender), generator=rng)[:n]
                    clean = augment(defender.as_float(rows), rng)
                    pick = torch.randperm(len(key_rows), generator=rng)[:m]
                    with torch.no_grad():
                        keys = (encoder(originals[pick], logo) * 255).round() / 255
                    # Eq. 13 on the merged minibatch of n ordinary + m key samples.
                    loss_h = F.cross_entropy(host(torch.cat([clean, keys])),
                                             torch.cat([defender.labels[rows], targets[pick]]))
                    opt_h.zero_grad(set_to_none=True)
                    loss_h.backward()
                    opt_h.step()
                    scheduler.step()
                sums["host"] += loss_h.item()
                bar.advance(status=f"epoch {epoch + 1}/{config.epochs} host {sums['host'] / (step + 1):.3f} "
                            f"ssim {1 - sums['ssim'] / (step + 1):.3f}")
            history.append({k: round(v / steps_per_epoch, 5) for k, v in sums.items()})
    host.eval()
    encoder.eval()
    discriminator.eval()
    steps = steps_per_epoch * config.epochs
    return EmbedRecord(steps=steps, seconds=round(time.perf_counter() - start, 2), history=history,
                       cpu_seconds=round(time.process_time() - cpu, 2),
                       encoder_updates=steps * config.k1, key_exposures=round(steps * config.k2 * m / len(key_rows), 1))


def discriminator_scores(encoder: Encoder, discriminator: Discriminator, logo: torch.Tensor,
                         images: torch.Tensor) -> dict:
    """How well d tells key samples made from uint8 ``images`` (which it never trained on) from the images
    themselves: accuracy at p = 0.5 over both sets, and ROC AUC (0.5 for both: e and d have converged, Sec. 4.3:
    "until P_e is indistinguishable from P_data")."""
    from modelprove.stats import roc_auc

    originals = images.float() / 255
    keys = make_key_samples(encoder, logo, originals).float() / 255
    discriminator.eval()
    with torch.no_grad():
        real, fake = discriminator(originals), discriminator(keys)
    accuracy = 0.5 * ((real > 0).float().mean() + (fake <= 0).float().mean()).item()
    return {"accuracy": accuracy, "auc": roc_auc(real.numpy(), fake.numpy()), "images": len(images)}


# -- protect / open / verify ------------------------------------------------------------------------


@dataclass
class BlindWatermarkProtection:
    directory: Path
    host: Classifier
    encoder: Encoder
    logo: torch.Tensor
    keys: KeySet
    results: dict = field(default_factory=dict)


def choose_keys(defender: ImageDataset, config: BlindWatermarkConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """D' (rows of the defender set, ``key_fraction`` of it) and a random target label t_key for each
    (Sec. 5.1). A target may equal the true label, as in the paper's uniform draw."""
    count = max(2, round(config.key_fraction * len(defender)))
    rows = torch.randperm(len(defender), generator=generator(config.seed + 5))[:count].sort().values
    targets = torch.randint(0, defender.num_classes, (count,), generator=generator(config.seed + 6))
    return rows, targets


def train_blind_watermark(
    defender: ImageDataset, config: BlindWatermarkConfig, logo: torch.Tensor, *, show_progress: bool = True
) -> tuple[Classifier, Encoder, Discriminator, KeySet, EmbedRecord]:
    """Build h, e, d with ``config.seed``, run Algorithm 1, and make the final key set from D'."""
    channels = defender.input_shape[0]
    host = fresh_model(config.arch, defender, config.seed)  # seeds torch: e and d are initialised after h
    encoder = Encoder(channels, config.encoder_width)
    discriminator = Discriminator(channels, kind=config.discriminator, size=tuple(defender.input_shape[1:]))
    rows, targets = choose_keys(defender, config)
    record = embed(host, encoder, discriminator, defender, rows, targets, logo, config, show_progress=show_progress)
    keys = KeySet(make_key_samples(encoder, logo, defender.as_float(rows)), targets.clone(),
                  originals=defender.images[rows].clone(), indices=defender.indices[rows].clone())
    return host, encoder, discriminator, keys, record


def build(
    defender: ImageDataset,
    test: ImageDataset,
    out: str | Path,
    config: BlindWatermarkConfig | None = None,
    *,
    logo: str | Path | torch.Tensor | None = None,
    force: bool = False,
) -> BlindWatermarkProtection:
    """Watermark a new host model trained on ``defender`` data; write the protection to ``out``.

    ``logo``: an image file (the CLI's --logo) or a (C, H, W) tensor; None renders ``config.owner``.
    The protection keeps the host, the key samples with their target labels and originals, the logo
    and the encoder (and discriminator), all the owner needs to verify and to regenerate key samples.
    """
    config = config or BlindWatermarkConfig()
    check_same_task(defender, test)
    out = Path(out)
    ensure_writable(out, force)
    shape = defender.input_shape
    if logo is None:
        logo_tensor, logo_source = render_logo(config.owner, shape), f"rendered from owner {config.owner!r}"
    elif isinstance(logo, torch.Tensor):
        logo_tensor, logo_source = logo.float(), "tensor"
    else:
        logo_tensor, logo_source = load_logo(logo, shape), str(logo)
    if tuple(logo_tensor.shape) != shape:
        raise ModelproveError(f"the logo must have the images' shape {shape}, got {tuple(logo_tensor.shape)}.")
    # The logo is stored as an 8-bit PNG: train the encoder on exactly what open_protection will read back.
    logo_tensor = (logo_tensor.clamp(0, 1) * 255).round() / 255
    host, encoder, discriminator, keys, record = train_blind_watermark(defender, config, logo_tensor)
    originals = keys.originals.float() / 255
    key_images = keys.as_float()
    results = {
        "host_test_accuracy": evaluate(host, test),
        "key_accuracy": key_accuracy(host, keys),
        "key_originals_accuracy_on_targets": key_accuracy(host, KeySet(keys.originals, keys.targets)),
        "key_samples": len(keys),
        "key_ssim": ssim(originals, key_images).mean().item(),
        "key_mean_abs_difference": (key_images - originals).abs().mean().item(),
        "key_psnr_db": (10 * torch.log10(1 / ((key_images - originals) ** 2).mean().clamp_min(1e-12))).item(),
        "discriminator_held_out": discriminator_scores(encoder, discriminator, logo_tensor, test.images[:1000]),
        "embedding": asdict(record),
        "seconds": {"algorithm_1": record.seconds},
    }
    with create_protection(out, METHOD, {**asdict(config), "logo": logo_source}, force=force) as writer:
        training = {"dataset": defender.name, "test_accuracy": results["host_test_accuracy"], "algorithm_1": asdict(record)}
        save_host_and_keys(writer, METHOD, host, training, keys, defender, test, results)
        save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(writer.path(ENCODER_FILE)))
        save_file({k: v.contiguous() for k, v in discriminator.state_dict().items()},
                  str(writer.path(DISCRIMINATOR_FILE)))
        _save_logo(logo_tensor, writer.path(LOGO_FILE))
    return BlindWatermarkProtection(out, host, encoder, logo_tensor, keys, results)


def _save_logo(logo: torch.Tensor, path: Path) -> None:
    from PIL import Image

    array = (logo.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(path)


@dataclass
class OpenedBlindWatermark(OpenedKeyWatermark):
    logo: torch.Tensor | None = None

    def encoder(self) -> Encoder:
        """The owner's encoder, to make key samples from other images (the study's detectors)."""
        state = load_file(str(self.protection.path(ENCODER_FILE)))
        encoder = Encoder(self.host_card.input_shape[0], self.config.encoder_width)
        encoder.load_state_dict(state)
        return encoder.eval()

    def discriminator(self) -> Discriminator:
        state = load_file(str(self.protection.path(DISCRIMINATOR_FILE)))
        shape = self.host_card.input_shape
        kind = self.protection.config.get("discriminator", "conv")  # protections before the field had "conv"
        discriminator = Discriminator(shape[0], kind=kind, size=tuple(shape[1:]))
        discriminator.load_state_dict(state)
        return discriminator.eval()


def discriminator_accuracy(opened: OpenedBlindWatermark, images: torch.Tensor) -> dict:
    """:func:`discriminator_scores` of a protection's encoder and discriminator on uint8 ``images``."""
    return discriminator_scores(opened.encoder(), opened.discriminator(), opened.logo, images)


def open_protection(directory: str | Path | Protection) -> OpenedBlindWatermark:
    """Load a blind-watermark protection (a path is opened and hash-checked first)."""
    opened = open_key_watermark(directory, METHOD, BlindWatermarkConfig)
    for name in (ENCODER_FILE, LOGO_FILE):
        opened.protection.path(name)  # listed in the manifest, or a clear error
    logo = load_logo(opened.protection.path(LOGO_FILE), tuple(opened.host_card.input_shape))
    return OpenedBlindWatermark(opened.protection, opened.method, opened.keys, opened.host_card, opened.config, logo)


class BlindWatermark(KeySampleMethod):
    name = METHOD
    config = BlindWatermarkConfig
    description = ("Blind watermark: encoder-made key samples near ordinary images, from the owner's logo; key "
                   "accuracy with label-only access (Li et al. 2019)")
    inputs = ("logo",)

    def build(self, defender, test, out, config, *, force=False, **inputs):
        return build(defender, test, out, config, force=force, **inputs)

    def open(self, directory):
        return open_protection(directory)


BLIND_WATERMARK = BlindWatermark()
protect = BLIND_WATERMARK.protect
verify = BLIND_WATERMARK.verify


__all__ = ["VERIFY_OPTIONS", "BlindWatermarkConfig", "protect", "open_protection", "verify", "ssim"]
