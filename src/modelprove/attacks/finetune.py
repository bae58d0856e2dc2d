"""Fine-tuning (fully-accessible): continue training the victim's own weights.

``finetune`` is MOVE's "fine-tuning" attack (MOVE Sec. 2.1, 6.1): all layers trained for 5 epochs.
MOVE trains on *substitute* data of another domain (500,000 TinyImages for CIFAR-10); those images
have no labels of the victim's classes, so with ``data=<substitute>`` they are labelled by the
victim's own top-1 predictions (pseudo-labels, queried once through the oracle and counted) — the
adversary holds the model, so that is the only labelling that keeps its task. With the default
``data=attacker`` the attacker's own labelled split is used (CAE's FTAL setting, see ``ftal``).
The CAE variants FTLL/FTAL/RTLL/RTAL (CAE Sec. 5) reuse :func:`tune` with other layer choices.

``fraction`` keeps a seeded share of that data: MOVE Sec. 7.3.1's adaptive attack fine-tunes a stolen
model on p% benign training samples ("sample rate", Fig. 6), here p% of the attacker's split (as large
as the victim's training set in the bench grids).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from modelprove.access import WHITE_BOX, WhiteBoxAccess, require_access
from modelprove.attacks._shared import (
    check,
    check_training,
    frozen_except,
    labelled_by_victim,
    last_linear,
    reinitialise,
    require_data,
)
from modelprove.data.dataset import ImageDataset, seeded_share
from modelprove.data.substitute import SUBSTITUTES, load_substitute
from modelprove.training import TrainConfig, train

PAPER_SETTING = ("MOVE Sec. 6.1: 5 epochs on 500,000 TinyImages (other domain, victim-labelled); here 5 epochs "
                 "on the attacker split with its own labels (data=mnist-digits gives MOVE's substitute setting)")


@dataclass
class FinetuneConfig:
    """epochs/lr/batch_size: SGD as the trainer runs it; schedule: the learning rate's, "cosine" (to 0 over
    the epochs) or "constant" (a chain of constant-rate stages is one longer fine-tuning, e.g. the blind
    watermark's 100-epoch curve, Li et al. Table 2); augmentation: "crop" (hard labels survive a 2-pixel
    crop); data: "attacker" (the attacker's labelled split) or a substitute dataset name (labelled by the
    victim); limit: at most this many substitute images (None: all); fraction: the seeded share of that
    data fine-tuned on (MOVE Sec. 7.3.1's sample rate; 1: all of it)."""

    epochs: int = 5
    lr: float = 0.01
    batch_size: int = 128
    augmentation: str = "crop"
    schedule: str = "cosine"
    data: str = "attacker"
    limit: int | None = None
    fraction: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_training(self)
        check(self, "schedule", self.schedule in ("cosine", "constant"), "'cosine' or 'constant'", "constant")
        check(self, "data", self.data == "attacker" or self.data in SUBSTITUTES,
              f"'attacker' or a substitute dataset ({', '.join(SUBSTITUTES)})", "mnist-digits")
        check(self, "limit", self.limit is None or self.limit >= 1, "None or an integer >= 1", "5000")
        check(self, "fraction", 0.0 < self.fraction <= 1.0, "a share in (0, 1]", "0.1")


def steal(victim: WhiteBoxAccess, attacker_data: ImageDataset | None, config: FinetuneConfig):
    return tune(victim, attacker_data, config, attack="finetune", train_all=True, reinit_last=False)


def tune(victim: WhiteBoxAccess, attacker_data: ImageDataset | None, config: FinetuneConfig, *, attack: str,
         train_all: bool, reinit_last: bool):
    """Copy the victim; optionally re-initialise its last layer; train all layers or the last only."""
    require_access(victim, WHITE_BOX, f"attack {attack!r}")
    if config.data == "attacker":
        data = require_data(attacker_data, victim, attack)
        labels = "the attacker's own labels"
    else:
        substitute = load_substitute(config.data, victim.input_shape, limit=config.limit, seed=config.seed)
        data = labelled_by_victim(victim, substitute, attacker_data)
        labels = "the victim's top-1 labels"
    if config.fraction < 1.0:
        data = seeded_share(data, config.fraction, config.seed)
    suspect = copy.deepcopy(victim.model)
    head = last_linear(suspect)
    if reinit_last:
        reinitialise(head, config.seed)
    train_config = TrainConfig(epochs=config.epochs, lr=config.lr, batch_size=config.batch_size,
                               augmentation=config.augmentation, schedule=config.schedule, seed=config.seed)
    description = f"{attack} ({data.name})"
    if train_all:
        record = train(suspect, data, train_config, description=description)
    else:
        with frozen_except(suspect, head):
            record = train(suspect, data, train_config, description=description)
    return suspect.eval(), {
        "training": record.to_dict(),
        "labels": labels,
        "trained_layers": "all" if train_all else "last",
        "reinitialised_last_layer": reinit_last,
        "samples": len(data),
    }
