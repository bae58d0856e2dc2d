"""One trainer used by everything (victims, benign models, surrogates, attacks)."""

from modelprove.training.trainer import (
    TrainConfig,
    TrainRecord,
    agreement,
    cross_entropy,
    evaluate,
    train,
)

__all__ = ["TrainConfig", "TrainRecord", "agreement", "cross_entropy", "evaluate", "train"]
