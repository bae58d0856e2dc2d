"""Every random choice takes a seed: the same command with the same seed gives the same verdict."""

from __future__ import annotations

import torch


def generator(seed: int) -> torch.Generator:
    """A private generator, so one component's draws do not shift another's."""
    return torch.Generator().manual_seed(int(seed))
