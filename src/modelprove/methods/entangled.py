"""Entangled Watermarks as a Defense against Model Extraction (EWE; Jia et al., USENIX Security 2021).

A baseline of MOVE (TPAMI Sec. 6.1, "Entangled Watermarks"); the watermark is trained into the
victim, so the protection trains its own victim.

1. Watermark data (EWE Sec. 4.1 / Algorithm 1): images of a *source* class c_S stamped with a
   trigger and labelled as the *target* class c_T. The trigger here is the BadNets-style white
   square of :class:`modelprove.data.style.PatchTransformer` at the bottom-right corner (EWE places
   its square where the SNNL gradient is largest; a fixed corner keeps the trigger a stated secret).
   ``watermark_rate`` follows MOVE Sec. 6.1: "We poison 10% training samples for all defenses" (at
   most all source-class images: with 10 balanced classes that is nearly all of them).
2. Entangled training (EWE Sec. 4.2, Eq. 3-4): minimise the cross-entropy on clean + watermark data
   *minus* kappa times the soft nearest-neighbour loss (SNNL; Frosst et al., ICML 2019, Eq. 1)
       SNNL(h, y, T) = -1/b sum_i log( sum_{j!=i, y_j=y_i} e^{-|h_i-h_j|^2/T} / sum_{k!=i} e^{-|h_i-h_k|^2/T} )
   of the hidden representations h of [watermarks; target-class samples] with labels
   watermark / not-watermark, at the last ``snnl_layers`` hidden layers, each with its own
   temperature T. Maximising the SNNL entangles the two groups: the watermark is then carried by
   the same features as the target task, so a model extracted from the victim's outputs inherits
   it. As in EWE (following Frosst et al. Sec. 3) T is learnt against the model, by gradient
   descent on the SNNL, so the entanglement must hold at the temperature that separates best.
   Difference from Algorithm 1: EWE pre-trains on clean data and then alternates clean and
   watermark batches; here every batch of the one trainer mixes both (watermarks are part of the
   training set) and the SNNL is taken over the watermark and target-class rows of the batch.
3. Verification (the issue's test, MOVE Sec. 6.1's Delta-mu and p-value): for m source-class images
   held out of training (the defender's test split), the suspect's probability of c_T on the
   triggered image vs the same image without the trigger; a one-sided paired t-test of
   H0: mu_triggered <= mu_clean, stolen iff p < alpha, effect delta_mu. The watermark success rate
   (fraction of triggered images classified c_T, EWE Sec. 5) is reported in the details.
   EWE is a black-box method; the white-box setting computes the same statistic from the weights
   (MOVE: "methods designed under the black-box setting can also be used in the white-box
   scenarios"), with the white-box m (10) instead of the black-box m (100).

Measured (scripts/entangled_sanity.py: Fashion-MNIST 10k/10k/2k, 5 epochs, cnn_small, kappa 0.1):
victim 82.3% test accuracy vs 84.05% for the same model trained without watermarks; the victim, a
copy and a fine-tuned copy flagged (p <= 1e-19), an independent model cleared (p >= 0.85).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from modelprove.access import BLACK_BOX, WHITE_BOX, LabelOnlyAccess
from modelprove.core.errors import ModelproveError
from modelprove.core.seeding import generator
from modelprove.data.dataset import ImageDataset
from modelprove.data.style import PatchTransformer
from modelprove.methods.common import TrainsModels, check_same_task, check_t_test_fields, dataset_info, fresh_model
from modelprove.methods.badnets import TriggerMethod
from modelprove.methods.protection import Protection, create_protection, ensure_writable
from modelprove.models import Classifier, ModelCard, card_for, load_model, predict_proba, save_model
from modelprove.training import evaluate, train

METHOD = "entangled"
ACCESS = (WHITE_BOX, BLACK_BOX)
VERIFY_OPTIONS = ("m", "m_black_box", "alpha")


@dataclass
class EntangledConfig(TrainsModels):
    """EWE's parameters. The shared fields (arch .. alpha, m) mean what they mean in MoveConfig."""

    arch: str = "cnn_small"
    source_class: int = 0  # c_S: its images carry the trigger
    target_class: int = 1  # c_T: the label the triggered images are given
    watermark_rate: float = 0.1  # watermarks as a fraction of the defender set (MOVE: 10% poisoned)
    trigger_size: int = 4  # side of the white square; 4 so a 2-pixel random crop never removes it
    kappa: float = 0.1  # weight of the SNNL term (EWE's "factor"); 1.0 dropped bars accuracy to 31%
    snnl_layers: int = 3  # the SNNL is taken at the last this-many hidden (ReLU) layers
    temperature_lr: float = 0.01  # step of the gradient descent of log T on the SNNL
    verification_pool: int = 300  # held-out source-class test images kept for verification
    m: int = 10  # images per white-box verification (MOVE's white-box m)
    m_black_box: int = 100  # images per black-box verification (MOVE's black-box m)
    alpha: float = 0.01
    epochs: int = 8
    batch_size: int = 128
    lr: float = 0.05
    augmentation: str = "crop"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.source_class == self.target_class:
            raise ModelproveError(
                f"source_class and target_class must differ (both {self.source_class}).",
                fix="choose two different class indices, e.g. --set source_class=0 --set target_class=1.",
            )
        if min(self.source_class, self.target_class) < 0:
            raise ModelproveError("source_class and target_class are class indices, so >= 0.")
        if not 0.0 < self.watermark_rate < 1.0:
            raise ModelproveError(f"watermark_rate must be in (0, 1), got {self.watermark_rate}.")
        if self.trigger_size < 1:
            raise ModelproveError(f"trigger_size must be at least 1 pixel, got {self.trigger_size}.")
        if self.kappa < 0:
            raise ModelproveError(f"kappa (the SNNL weight) must be >= 0, got {self.kappa}.")
        if self.snnl_layers < 1:
            raise ModelproveError(f"snnl_layers must be at least 1, got {self.snnl_layers}.")
        if self.temperature_lr < 0:
            raise ModelproveError(f"temperature_lr must be >= 0, got {self.temperature_lr}.")
        check_t_test_fields(self)

    def trigger(self) -> PatchTransformer:
        return PatchTransformer(size=self.trigger_size)


def soft_nearest_neighbour_loss(h: torch.Tensor, labels: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Frosst et al.'s SNNL (ICML 2019, Eq. 1) of representations ``h`` (b, d) with ``labels`` (b,).

    Computed with log-sum-exp so large squared distances do not underflow; a row without any other
    row of its label has no defined term and is left out (Frosst et al. add an epsilon instead).
    Returns 0 when no row has a partner of its label.
    """
    h = h.flatten(1)
    distances = torch.cdist(h, h).pow(2)
    b = len(h)
    logits = -distances / temperature
    others = ~torch.eye(b, dtype=torch.bool, device=h.device)
    same = (labels[:, None] == labels[None, :]) & others
    valid = same.any(dim=1)
    if not valid.any():
        return h.sum() * 0.0
    neg_inf = torch.finfo(logits.dtype).min
    log_same = torch.logsumexp(logits.masked_fill(~same, neg_inf), dim=1)
    log_all = torch.logsumexp(logits.masked_fill(~others, neg_inf), dim=1)
    return -(log_same - log_all)[valid].mean()


def hidden_layers(model: nn.Module, count: int) -> list[nn.Module]:
    """The last ``count`` ReLU modules of ``model``: its hidden representations, whatever the arch.

    Every registered architecture uses nn.ReLU after each hidden conv/linear layer, so their outputs
    are the layers EWE entangles (its MNIST model: the two conv layers and the first dense layer).
    """
    relus = [module for module in model.modules() if isinstance(module, nn.ReLU)]
    if not relus:
        raise ModelproveError(f"{type(model).__name__} has no ReLU layers whose outputs the SNNL could use.")
    return relus[-count:]


class EntanglementLoss:
    """EWE's training loss for the one trainer: CE - kappa * sum_l SNNL_l (EWE Eq. 4).

    Forward hooks on :func:`hidden_layers` record each batch's hidden representations; rows of the
    training set at ``watermark_rows`` are watermarks. Each layer's temperature T_l = exp(s_l) is
    initialised from the first batch (the median squared distance, so the scale of a layer's
    activations does not matter) and then descends the SNNL: s_l <- s_l - temperature_lr * dSNNL/ds_l.
    """

    def __init__(self, model: nn.Module, is_watermark: torch.Tensor, target_class: int, config: EntangledConfig):
        self.is_watermark = is_watermark
        self.target_class = target_class
        self.kappa = config.kappa
        self.temperature_lr = config.temperature_lr
        self.layers = hidden_layers(model, config.snnl_layers)
        self.captured: list[torch.Tensor | None] = [None] * len(self.layers)
        self.log_temperatures: list[torch.Tensor | None] = [None] * len(self.layers)
        self.handles = [layer.register_forward_hook(self._hook(i)) for i, layer in enumerate(self.layers)]
        self.last_snnl = float("nan")

    def _hook(self, i: int):
        def record(module, inputs, output):
            self.captured[i] = output

        return record

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def temperatures(self) -> list[float]:
        return [float(s.detach().exp()) if s is not None else float("nan") for s in self.log_temperatures]

    def __call__(self, logits: torch.Tensor, index: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits, labels)
        if self.kappa == 0:
            return loss
        watermark = self.is_watermark[index]
        rows = watermark | (labels == self.target_class)
        if watermark.sum() < 2 or (rows & ~watermark).sum() < 2:
            return loss  # the SNNL needs both groups in the batch
        group = watermark[rows].long()
        snnl = logits.new_zeros(())
        for i, h in enumerate(self.captured):
            if h is None:
                raise ModelproveError("the SNNL hooks recorded no hidden representation for this batch.")
            h = h[rows].flatten(1)
            if self.log_temperatures[i] is None:
                median = torch.cdist(h.detach(), h.detach()).pow(2).median().clamp_min(1e-6)
                self.log_temperatures[i] = median.log().clone().requires_grad_(True)
            log_t = self.log_temperatures[i]
            layer_snnl = soft_nearest_neighbour_loss(h, group, log_t.exp())
            if self.temperature_lr > 0:
                (grad,) = torch.autograd.grad(layer_snnl, log_t, retain_graph=True)
                with torch.no_grad():
                    log_t -= self.temperature_lr * grad
            # the model sees T as a constant of this step
            snnl = snnl + soft_nearest_neighbour_loss(h, group, log_t.detach().exp())
        self.last_snnl = float(snnl.detach())
        return loss - self.kappa * snnl


def make_watermarks(defender: ImageDataset, config: EntangledConfig) -> ImageDataset:
    """Triggered source-class images labelled c_T (EWE Sec. 4.1): ``watermark_rate`` of the
    defender set, drawn at random from its source-class images (all of them if there are fewer)."""
    source_rows = (defender.labels == config.source_class).nonzero().flatten()
    if len(source_rows) < 2:
        raise ModelproveError(
            f"the defender data {defender.name} has {len(source_rows)} images of source class "
            f"{config.source_class}; EWE needs them to make watermarks.",
            fix="choose another source_class.",
        )
    count = min(len(source_rows), max(2, round(config.watermark_rate * len(defender))))
    chosen = source_rows[torch.randperm(len(source_rows), generator=generator(config.seed))[:count]].sort().values
    sources = defender.subset(chosen, name=f"{defender.name}[source]")
    stamped = (config.trigger()(sources.as_float()) * 255).round().to(torch.uint8)
    return ImageDataset(stamped, torch.full_like(sources.labels, config.target_class), list(defender.classes),
                        f"{defender.name}[watermarks]", sources.indices)


@dataclass
class EntangledProtection:
    directory: Path
    victim: Classifier
    results: dict = field(default_factory=dict)


def _check_classes(data: ImageDataset, config: EntangledConfig) -> None:
    for name in ("source_class", "target_class"):
        if getattr(config, name) >= data.num_classes:
            raise ModelproveError(
                f"{name} = {getattr(config, name)} but {data.name} has {data.num_classes} classes "
                f"(indices 0..{data.num_classes - 1}).",
                fix=f"--set {name}=<index below {data.num_classes}>.",
            )


def build(
    defender: ImageDataset,
    test: ImageDataset,
    out: str | Path,
    config: EntangledConfig | None = None,
    *,
    force: bool = False,
) -> EntangledProtection:
    """Train an EWE-watermarked victim on ``defender`` data and write its protection to ``out``."""
    config = config or EntangledConfig()
    check_same_task(defender, test)
    _check_classes(defender, config)
    out = Path(out)
    ensure_writable(out, force)
    timings: dict[str, float] = {}

    watermarks = make_watermarks(defender, config)
    pool_rows = (test.labels == config.source_class).nonzero().flatten()
    pool_rows = pool_rows[torch.randperm(len(pool_rows), generator=generator(config.seed + 1))]
    pool_rows = pool_rows[: config.verification_pool].sort().values
    if len(pool_rows) < config.m_black_box:
        raise ModelproveError(
            f"the test data {test.name} has {len(pool_rows)} images of source class {config.source_class}, "
            f"fewer than m_black_box = {config.m_black_box}.",
            fix="use a larger test set, or lower m_black_box.",
        )
    pool = test.subset(pool_rows, name=f"{test.name}[source]")

    victim = fresh_model(config.arch, defender, config.seed)
    training_set = ImageDataset.concat([defender, watermarks], name=f"{defender.name}+EWE watermarks")
    is_watermark = torch.arange(len(training_set)) >= len(defender)
    loss = EntanglementLoss(victim, is_watermark, config.target_class, config)
    start = time.perf_counter()
    try:
        record = train(victim, training_set, config.train_config(config.seed), loss_fn=loss,
                       description="victim (EWE: CE - kappa SNNL)")
    finally:
        loss.remove()
    timings["train_victim"] = time.perf_counter() - start

    triggered = config.trigger()(pool.as_float())
    results = {
        "victim_test_accuracy": evaluate(victim, test),
        "victim_watermark_training_accuracy": evaluate(victim, watermarks),
        # EWE Sec. 5's watermark success rate, on held-out source-class images
        "victim_watermark_success": float((predict_proba(victim, triggered).argmax(1) == config.target_class)
                                          .float().mean()),
        "watermarks": len(watermarks),
        "final_snnl": loss.last_snnl,
        "temperatures": loss.temperatures(),
        "seconds": {k: round(v, 2) for k, v in timings.items()},
    }
    data_record = dataset_info(defender, test, verification_pool=len(pool))
    with create_protection(out, METHOD, asdict(config), force=force) as writer:
        training = {"dataset": training_set.name, "test_accuracy": results["victim_test_accuracy"], **record.to_dict()}
        save_model(victim, card_for(victim, defender.classes, training, {"kind": "victim", "method": METHOD}),
                   writer.path("victim.safetensors"))
        save_file({"images": pool.images.contiguous(), "labels": pool.labels.contiguous(),
                   "indices": pool.indices.contiguous()}, str(writer.path("verification.safetensors")))
        writer.record(dataset=data_record, results=results, access=ACCESS)
    return EntangledProtection(directory=out, victim=victim, results=results)


@dataclass
class OpenedEntangled:
    protection: Protection
    victim: Classifier
    victim_card: ModelCard
    pool: torch.Tensor  # held-out source-class images, uint8, without the trigger
    config: EntangledConfig


def open_protection(directory: str | Path | Protection) -> OpenedEntangled:
    """Load an EWE protection for verification (a path is opened and hash-checked first)."""
    protection = Protection.open_for(directory, METHOD)
    config = protection.config_as(EntangledConfig)
    victim, card = load_model(protection.path("victim.safetensors"))
    pool = load_file(str(protection.path("verification.safetensors")))["images"]
    return OpenedEntangled(protection, victim, card, pool, config)


class Entangled(TriggerMethod):
    """EWE's evidence: BadNets' trigger evidence on held-out source-class images with EWE's trigger."""

    name = METHOD
    config = EntangledConfig
    description = ("Entangled Watermarks: triggered source-class images labelled as a target class, entangled "
                   "with it by the soft nearest-neighbour loss; target probability triggered vs clean (Jia et al. 2021)")

    def build(self, defender, test, out, config, *, force=False, **inputs):
        return build(defender, test, out, config, force=force)

    def open(self, directory):
        return open_protection(directory)

    def pool(self, opened: OpenedEntangled) -> torch.Tensor:
        return opened.pool

    def trigger(self, opened: OpenedEntangled, config: EntangledConfig, images: torch.Tensor) -> torch.Tensor:
        return config.trigger()(images)

    def target(self, config: EntangledConfig) -> int:
        return config.target_class


ENTANGLED = Entangled()
protect = ENTANGLED.protect
verify = ENTANGLED.verify
