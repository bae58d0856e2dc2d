"""Every random choice takes a seed: the same command with the same seed gives the same verdict."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch globally; return a torch generator for explicit use."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def generator(seed: int) -> torch.Generator:
    """A private generator, so one component's draws do not shift another's."""
    return torch.Generator().manual_seed(int(seed))
