"""Gradient-matching watermark: a clean-label trigger (Witches' Brew, Geiping et al. ICLR 2021), MOVE's baseline.

MOVE (TPAMI, Sec. 6.1, Fig. 3c) compares with a watermark planted by gradient matching: poison images
keep their correct labels, and only a small, bounded perturbation makes training on them teach the
victim the trigger. Following Witches' Brew (Sec. 3, Alg. 1) and its backdoor form (the adversarial
objective is the trigger on images of other classes, as in Souri et al.'s Sleeper Agent):

1. A surrogate F (the victim's architecture) is trained on the clean defender data.
2. The adversarial gradient: g_adv = ∇_θ L(F(x_j ⊕ trigger), y_t) over ``source_samples`` defender
   images x_j not of the target class y_t, stamped with BadNets' white square.
3. Poisons: P images x_i of the target class (labels y_t, correct). Their perturbations Δ_i, with
   ||Δ_i||_inf <= eps and x_i + Δ_i in [0, 1], minimise the alignment loss (Eq. 3)
   1 − cos(∇_θ L(F(x + Δ), y_t), g_adv), the poison gradient taken over a batch of poisons, by signed
   Adam steps (the sign of ∂/∂Δ, then Adam), the step size divided by 10 at 3/8, 5/8 and 7/8 of the
   steps, from a uniform random start; of R restarts the one with the lowest final loss is kept.
4. The victim trains from scratch, with the ordinary trainer, on the defender set with the P poisons
   replaced by their perturbed (uint8-rounded) versions.

Verification is BadNets' (methods/badnets.py): the triggered-vs-benign paired t-test of the
suspect's target-class probability.

Scaled down for a CPU (the paper: 250 steps, 8 restarts, ResNet-18 surrogate, differentiable
augmentation during crafting): ``craft_steps`` = 40 signed-Adam steps, ``restarts`` = 1, the victim's
architecture as surrogate trained for ``surrogate_epochs`` epochs, the victim's own augmentation
(random crops) applied while crafting, and no surrogate retraining by default (Sleeper Agent's
addition, ``retrain_every``). The poison budget ``poison_rate`` is a fraction of
the whole training set (10%, MOVE's setting), drawn from the target class; when the target class has
fewer images than that, every target-class image is a poison and the results record the fraction
actually used (on a 10-class balanced set, 10% of the set is about the whole target class).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from modelprove.core.errors import ModelproveError
from modelprove.core.progress import task
from modelprove.core.seeding import generator
from modelprove.data.augment import AUGMENTATIONS
from modelprove.data.dataset import ImageDataset
from modelprove.data.style import stamp_patch
from modelprove.methods.badnets import (
    ACCESS,
    OpenedTrigger,
    TriggerProtection,
    check_task,
    check_trigger_fields,
    open_trigger_protection,
    trigger_results,
    verification_pool,
    TriggerMethod,
    write_trigger_protection,
)
from modelprove.methods.common import TrainsModels, dataset_info, fresh_model
from modelprove.methods.protection import Protection, ensure_writable
from modelprove.models import Classifier
from modelprove.training import train

METHOD = "gradient-matching"
VERIFY_OPTIONS = ("m", "m_black_box", "alpha")


@dataclass
class GradientMatchingConfig(TrainsModels):
    """Gradient-matching watermark parameters (Witches' Brew's eps = 16/255, scaled-down crafting)."""

    arch: str = "cnn_small"
    poison_rate: float = 0.1  # poisons as a fraction of the training set, all of the target class
    target: int = 0  # y_t
    patch_size: int = 3  # the trigger: BadNets' white square at the bottom-right
    eps: float = 16 / 255  # l_inf bound of each perturbation, in [0, 1] pixel units
    craft_steps: int = 40  # signed-Adam steps per restart (the paper: 250)
    restarts: int = 1  # the paper: 8
    craft_lr: float = 0.01  # Adam step size on Δ in [0, 1] pixel units (~2.5/255 per step at first)
    craft_batch: int = 256  # poisons whose summed gradient is matched at once
    source_samples: int = 500  # triggered non-target defender images defining g_adv
    surrogate_epochs: int | None = None  # None: the victim's epochs
    retrain_every: int = 0  # retrain the surrogate on the current poisons every this many steps (0: never)
    # Apply the victim's training augmentation to the poisons while crafting (Witches' Brew's
    # differentiable augmentation, Sec. 4), so the perturbation survives the trainer's random crops.
    craft_augment: bool = True
    verification_pool: int = 300
    m: int = 10
    m_black_box: int = 100
    alpha: float = 0.01
    epochs: int = 8
    batch_size: int = 128
    lr: float = 0.05
    augmentation: str = "crop"
    seed: int = 0

    def __post_init__(self) -> None:
        check_trigger_fields(self)
        if not 0.0 < self.eps <= 1.0:
            raise ModelproveError(f"eps must be in (0, 1] (pixel units; Witches' Brew: 16/255), got {self.eps}.")
        for name in ("craft_steps", "restarts", "craft_batch", "source_samples"):
            if getattr(self, name) < 1:
                raise ModelproveError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.craft_lr <= 0:
            raise ModelproveError(f"craft_lr must be positive, got {self.craft_lr}.")
        if self.retrain_every < 0:
            raise ModelproveError(f"retrain_every must be >= 0 (0: never retrain), got {self.retrain_every}.")
        if self.surrogate_epochs is not None and self.surrogate_epochs < 1:
            raise ModelproveError(f"surrogate_epochs must be at least 1 (or None), got {self.surrogate_epochs}.")


def _parameters(model: Classifier) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def adversarial_gradient(surrogate: Classifier, sources: torch.Tensor, target: int,
                         patch_size: int) -> list[torch.Tensor]:
    """g_adv = ∇_θ L(F(x ⊕ trigger), y_t) (Witches' Brew Eq. 2 with the trigger as the adversarial goal)."""
    triggered = stamp_patch(sources, patch_size)
    labels = torch.full((len(sources),), target, dtype=torch.long)
    loss = F.cross_entropy(surrogate(triggered), labels)
    return [g.detach() for g in torch.autograd.grad(loss, _parameters(surrogate))]


def alignment_loss(surrogate: Classifier, poisons: torch.Tensor, labels: torch.Tensor,
                   target_grad: list[torch.Tensor], target_norm: torch.Tensor) -> torch.Tensor:
    """1 − cos(∇_θ L(F(poisons), labels), g_adv) over all parameters at once (Witches' Brew Eq. 3),
    differentiable in ``poisons`` (the poison gradient is built with create_graph)."""
    loss = F.cross_entropy(surrogate(poisons), labels)
    grads = torch.autograd.grad(loss, _parameters(surrogate), create_graph=True)
    dot = sum((g * t).sum() for g, t in zip(grads, target_grad))
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
    return 1 - dot / (norm * target_norm)


def craft_poisons(surrogate: Classifier, bases: torch.Tensor, labels: torch.Tensor, target_grad: list[torch.Tensor],
                  config: GradientMatchingConfig, seed: int,
                  retrain: Callable[[torch.Tensor, int], tuple[Classifier, list[torch.Tensor]]] | None = None,
                  ) -> tuple[torch.Tensor, dict]:
    """Δ for the float ``bases`` (Witches' Brew Alg. 1, scaled down): signed Adam on the alignment loss,
    projected onto ||Δ||_inf <= eps and [0, 1]; the restart with the lowest final loss wins.

    With ``config.retrain_every`` > 0 and a ``retrain`` callback (Δ, round) -> (surrogate, g_adv), the
    surrogate is retrained on the current poisons every that many steps (Sleeper Agent, Souri et al.
    2022, Sec. 4), so later steps match gradients of a model that has seen the poisons.

    Returns (Δ, a record with the alignment loss before crafting and after, per restart).
    """
    state = {"surrogate": surrogate, "target_grad": target_grad}

    def prepare() -> None:
        # BatchNorm on its running statistics: each poison's gradient then does not depend on which
        # other poisons share its crafting batch.
        state["surrogate"].eval()
        for p in state["surrogate"].parameters():
            p.requires_grad_(True)
        state["target_norm"] = torch.sqrt(sum(t.pow(2).sum() for t in state["target_grad"]))

    prepare()
    batches = [slice(i, i + config.craft_batch) for i in range(0, len(bases), config.craft_batch)]

    augment = AUGMENTATIONS[config.augmentation] if config.craft_augment else None
    augment_rng = generator(seed + 1)

    def total_loss(delta: torch.Tensor, backward: bool) -> float:
        value = 0.0
        for b in batches:
            poisons = bases[b] + delta[b]
            if backward and augment is not None:  # crops are differentiable: Δ's gradient flows through
                poisons = augment(poisons, augment_rng)
            loss = alignment_loss(state["surrogate"], poisons, labels[b], state["target_grad"], state["target_norm"])
            if backward:
                loss.backward()
            value += float(loss.detach()) * len(bases[b])
        return value / len(bases)

    zero = torch.zeros_like(bases)
    before = total_loss(zero, backward=False)
    rng = generator(seed)
    best, best_loss, finals, rounds = zero, math.inf, [], 0
    with task("gradient matching", config.restarts * config.craft_steps) as bar:
        for _ in range(config.restarts):
            start = (torch.rand(bases.shape, generator=rng) * 2 - 1) * config.eps
            delta = ((bases + start).clamp(0, 1) - bases).requires_grad_(True)
            optimizer = torch.optim.Adam([delta], lr=config.craft_lr)
            milestones = [round(config.craft_steps * f) for f in (3 / 8, 5 / 8, 7 / 8)]
            scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
            for step in range(config.craft_steps):
                if retrain is not None and config.retrain_every and step and step % config.retrain_every == 0:
                    rounds += 1
                    state["surrogate"], state["target_grad"] = retrain(delta.detach(), rounds)
                    prepare()
                optimizer.zero_grad(set_to_none=True)
                loss = total_loss(delta, backward=True)
                delta.grad.sign_()  # signed Adam (Witches' Brew Sec. 3)
                optimizer.step()
                scheduler.step()
                with torch.no_grad():  # project onto the eps ball and the image box
                    delta.clamp_(-config.eps, config.eps)
                    delta.copy_((bases + delta).clamp(0, 1) - bases)
                for p in state["surrogate"].parameters():
                    p.grad = None
                bar.advance(status=f"alignment loss {loss:.3f}")
            final = total_loss(delta.detach(), backward=False)
            finals.append(round(final, 5))
            if final < best_loss:
                best, best_loss = delta.detach().clone(), final
    return best, {"alignment_loss_before": round(before, 5), "alignment_loss_after": finals,
                  "surrogate_retrainings": rounds}


@dataclass
class Crafted:
    """What crafting made: the clean surrogate it started from, the poisoned defender set (labels kept)
    and its poisons, and the crafting record."""

    surrogate: Classifier
    poisoned: ImageDataset
    poison_rows: torch.Tensor
    perturbed: torch.Tensor  # uint8 poisons, in poison_rows' order
    target_rows: torch.Tensor  # every defender row of the target class
    record: dict
    seconds: dict[str, float]


def craft(defender: ImageDataset, config: GradientMatchingConfig) -> Crafted:
    """Steps 1-3: train a surrogate on clean ``defender`` data and craft the clean-label poisons on it
    (the victim is trained on ``Crafted.poisoned`` by :func:`build`)."""
    timings: dict[str, float] = {}
    start = time.perf_counter()
    surrogate_seed = config.seed + 7919  # not the victim's: crafting must transfer to another model
    surrogate = fresh_model(config.arch, defender, surrogate_seed)
    train(surrogate, defender, config.train_config(surrogate_seed, config.surrogate_epochs),
          description="surrogate (clean D)")
    timings["train_surrogate"] = time.perf_counter() - start

    start = time.perf_counter()
    target_rows = torch.nonzero(defender.labels == config.target).squeeze(1)
    others = torch.nonzero(defender.labels != config.target).squeeze(1)
    budget = max(1, round(config.poison_rate * len(defender)))
    poison_rows = target_rows[torch.randperm(len(target_rows), generator=generator(config.seed))[:budget]].sort().values
    if len(poison_rows) == 0 or len(others) == 0:
        raise ModelproveError(f"{defender.name} needs images of the target class {config.target} and of other classes.")
    source_rows = others[torch.randperm(len(others), generator=generator(config.seed + 1))[: config.source_samples]]
    target_grad = adversarial_gradient(surrogate.eval(), defender.as_float(source_rows), config.target,
                                       config.patch_size)
    bases = defender.as_float(poison_rows)
    sources = defender.as_float(source_rows)

    def poison(delta: torch.Tensor) -> tuple[torch.Tensor, ImageDataset]:
        perturbed = ((bases + delta) * 255).round().clamp(0, 255).to(torch.uint8)
        images = defender.images.clone()  # dataset tensors are shared: copy before writing
        images[poison_rows] = perturbed
        return perturbed, defender.with_images(images, name=f"{defender.name}[gradient-matching]")  # labels kept

    def retrain(delta: torch.Tensor, round_: int) -> tuple[Classifier, list[torch.Tensor]]:
        seed = surrogate_seed + round_
        model = fresh_model(config.arch, defender, seed)
        train(model, poison(delta)[1], config.train_config(seed, config.surrogate_epochs),
              description=f"surrogate retraining {round_}", show_progress=False)
        return model, adversarial_gradient(model.eval(), sources, config.target, config.patch_size)

    delta, record = craft_poisons(surrogate, bases, defender.labels[poison_rows], target_grad, config,
                                  seed=config.seed + 3, retrain=retrain)
    perturbed, poisoned = poison(delta)
    timings["craft_poisons"] = time.perf_counter() - start
    return Crafted(surrogate, poisoned, poison_rows, perturbed, target_rows, record, timings)


def build(
    defender: ImageDataset,
    test: ImageDataset,
    out: str | Path,
    config: GradientMatchingConfig | None = None,
    *,
    force: bool = False,
) -> TriggerProtection:
    """Craft clean-label poisons on a surrogate, train the victim on the poisoned defender set from
    scratch, and write its protection to ``out``."""
    config = config or GradientMatchingConfig()
    check_task(defender, test, config.target)
    out = Path(out)
    ensure_writable(out, force)
    pool = verification_pool(test, config.target, config.verification_pool, config.seed + 2)  # fails before training
    crafted = craft(defender, config)
    timings = dict(crafted.seconds)
    poison_rows, perturbed = crafted.poison_rows, crafted.perturbed

    start = time.perf_counter()
    victim = fresh_model(config.arch, defender, config.seed)
    record = train(victim, crafted.poisoned, config.train_config(config.seed),
                   description="victim (clean-label poisoned D)")
    timings["train_victim"] = time.perf_counter() - start
    linf = (perturbed.int() - defender.images[poison_rows].int()).abs().amax().item() if len(poison_rows) else 0
    results = {
        **trigger_results(victim, test, pool, config),
        **{k.replace("victim_", "surrogate_"): v for k, v in trigger_results(crafted.surrogate, test, pool, config).items()},
        "poisons": len(poison_rows),
        "poison_fraction_of_set": round(len(poison_rows) / len(defender), 5),
        "poison_fraction_of_target_class": round(len(poison_rows) / len(crafted.target_rows), 5),
        "max_perturbation_pixels": int(linf),  # of 255
        **crafted.record,
        "seconds": {k: round(v, 2) for k, v in timings.items()},
    }
    data_record = dataset_info(defender, test, poisons=len(poison_rows), verification_pool=len(pool))
    write_trigger_protection(out, METHOD, config, victim, record, defender, pool, results, data_record, ACCESS,
                             force=force, extra_tensors={"poison_rows": poison_rows, "poisons": perturbed})
    return TriggerProtection(directory=out, victim=victim, results=results)


def open_protection(directory: str | Path | Protection) -> OpenedTrigger:
    """Load a gradient-matching protection for verification."""
    return open_trigger_protection(directory, METHOD, GradientMatchingConfig)


class GradientMatching(TriggerMethod):
    name = METHOD
    config = GradientMatchingConfig
    description = ("Gradient-matching watermark: clean-label poisons crafted so their gradient matches the "
                   "trigger's (Witches' Brew, Geiping et al. 2021); BadNets' trigger evidence")

    def build(self, defender, test, out, config, *, force=False, **inputs):
        return build(defender, test, out, config, force=force)

    def open(self, directory):
        return open_protection(directory)


GRADIENT_MATCHING = GradientMatching()
protect = GRADIENT_MATCHING.protect
verify = GRADIENT_MATCHING.verify
