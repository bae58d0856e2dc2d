"""The null panel of a task: honest independent models that no part of any method was fitted to.

A verdict is a claim about models, so it is judged against models (DESIGN: evidence and decision): K
models per architecture, trained by the defender on its own clean data, with several training recipes
(optimiser, learning rate, augmentation, epochs, data subset) and seeds of their own — never the
victim's, never a benign model's or a meta-classifier negative's (those take small seeds; panel seeds
are hashes of the member's name). Independent models do not depend on the victim, so one panel serves
every protection of the same data: its models are kept in a content-addressed :class:`ModelStore` and
trained once.

A method whose null hypothesis is about data rather than the victim (Dataset Inference: "not trained on
the private samples") names the defender rows its panel must not train on; that panel is then its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from modelprove.core.errors import ModelproveError
from modelprove.core.seeding import generator
from modelprove.data.dataset import ImageDataset
from modelprove.methods.common import fresh_model
from modelprove.models import ARCHITECTURES, Classifier
from modelprove.models.store import ModelStore
from modelprove.training import TrainConfig, evaluate, train


@dataclass(frozen=True)
class PanelRecipe:
    """One way an honest owner might train a model of the task."""

    name: str
    optimizer: str
    lr: float
    augmentation: str
    epochs_scale: float  # of the panel's epochs
    data_fraction: float  # of the defender data (a seeded subset)


# SGD and Adam, with and without augmentation, full and half data, full and half length: an honest
# suspect's recipe is unknown, so the panel spans the common ones (and the verdict reports how the rule
# treats a recipe held out of it: leave-one-recipe-out). The first six are the panel's default; the
# others are for models a method fits itself, e.g. MOVE's meta-classifier negatives, which must not cover
# the panel's recipes or the panel would only show recipes the method has already learned to ignore.
RECIPES: dict[str, PanelRecipe] = {r.name: r for r in (
    PanelRecipe("sgd-crop", "sgd", 0.05, "crop", 1.0, 1.0),
    PanelRecipe("adam-none", "adam", 1e-3, "none", 1.0, 1.0),
    PanelRecipe("sgd-none-half", "sgd", 0.02, "none", 1.0, 0.5),
    PanelRecipe("adam-flip-short", "adam", 2e-3, "crop_flip", 0.5, 1.0),
    PanelRecipe("adam-none-half", "adam", 1e-3, "none", 1.0, 0.5),
    PanelRecipe("adam-crop-slow", "adam", 5e-4, "crop", 1.5, 1.0),
    PanelRecipe("adam-crop", "adam", 1e-3, "crop", 1.0, 1.0),
    PanelRecipe("sgd-none", "sgd", 0.05, "none", 1.0, 1.0),
    PanelRecipe("sgd-flip-long", "sgd", 0.03, "crop_flip", 1.5, 1.0),
)}
# The first panel: four recipes, 8 models per architecture. Against it Adam-trained honest models sat in
# the upper tail of MOVE's null distribution (docs/results/move-fmnist.md, calibration: 7.1% and 14.3% of
# honest black-box pairs below p 0.05 and 0.10); the benchmark's grids were built with it and keep it
# unless they name their recipes (their cached results are keyed on it).
FIRST_PANEL_RECIPES = ("sgd-crop", "adam-none", "sgd-none-half", "adam-flip-short")
# The default: two more Adam recipes and 12 models per architecture (two per recipe). Measured on
# move-fmnist's grid (docs/results/move-panel.md, `modelprove bench move-panel`): 0 of 44 honest models
# accused, shares below p 0.05 / 0.10 at their levels, the same detections.
PANEL_RECIPES = (*FIRST_PANEL_RECIPES, "adam-none-half", "adam-crop-slow")
# The victim's architecture and the first two others: cheap, and of three families (two CNNs, an MLP).
DEFAULT_ARCHITECTURES = ("cnn_small", "lenet5", "mlp", "vgg_small")


@dataclass
class PanelConfig:
    """How big the null panel is and how its models are trained (``protect --panel-*``)."""

    size: int = 12  # models per architecture (two of each default recipe)
    architectures: str = ""  # comma-separated; empty: the victim's and two others of DEFAULT_ARCHITECTURES
    recipes: str = ",".join(PANEL_RECIPES)
    epochs: int = 5
    batch_size: int = 128
    store: str | None = None  # where its models are kept; default $MODELPROVE_PANELS or ~/.cache/modelprove/panels

    def __post_init__(self) -> None:
        if self.size < 4:
            raise ModelproveError(f"the panel needs at least 4 models per architecture (leave-one-out needs 3 "
                                  f"left), got size={self.size}.", fix="pass --panel-size 4 or more.")
        if self.epochs < 1:
            raise ModelproveError(f"panel epochs must be >= 1, got {self.epochs}.")
        unknown = [r for r in self.recipe_list() if r not in RECIPES]
        if unknown or not self.recipe_list():
            raise ModelproveError(f"unknown panel recipe {unknown[0] if unknown else self.recipes!r}.",
                                  fix=f"use comma-separated names from {', '.join(RECIPES)}.")
        for arch in self.architecture_list(None):
            if arch not in ARCHITECTURES:
                raise ModelproveError(f"unknown panel architecture {arch!r}.",
                                      fix=f"use comma-separated names from {', '.join(ARCHITECTURES)}.")

    def recipe_list(self) -> list[str]:
        return [r.strip() for r in self.recipes.split(",") if r.strip()]

    def architecture_list(self, victim_arch: str | None) -> list[str]:
        named = [a.strip() for a in self.architectures.split(",") if a.strip()]
        if named:
            return list(dict.fromkeys(named))
        if victim_arch is None:
            return []
        return [victim_arch, *[a for a in DEFAULT_ARCHITECTURES if a != victim_arch][:2]]

    def store_path(self) -> Path:
        if self.store:
            return Path(self.store)
        return Path(os.environ.get("MODELPROVE_PANELS") or Path.home() / ".cache" / "modelprove" / "panels")


@dataclass(frozen=True)
class PanelMember:
    arch: str
    recipe: PanelRecipe
    replicate: int

    @property
    def name(self) -> str:
        return f"panel-{self.arch}-{self.recipe.name}-{self.replicate}"

    @property
    def seed(self) -> int:
        """Its own seed, a hash of its name: far from the small seeds victims and benign models take."""
        return int(hashlib.sha256(self.name.encode()).hexdigest()[:8], 16)


def panel_members(config: PanelConfig, victim_arch: str) -> list[PanelMember]:
    """``size`` members per architecture, the recipes taken in turn."""
    recipes = [RECIPES[name] for name in config.recipe_list()]
    return [PanelMember(arch, recipes[i % len(recipes)], i // len(recipes))
            for arch in config.architecture_list(victim_arch) for i in range(config.size)]


def recipe_data(recipe: PanelRecipe, data: ImageDataset, seed: int, excluded: torch.Tensor | None = None) -> ImageDataset:
    """The rows a model of ``recipe`` trains on: all of ``data`` but those whose dataset ``indices`` are in
    ``excluded``, then the recipe's seeded share."""
    rows = torch.arange(len(data))
    if excluded is not None and len(excluded):
        rows = rows[~torch.isin(data.indices, excluded.long())]
    if recipe.data_fraction < 1.0:
        keep = max(1, round(recipe.data_fraction * len(rows)))
        rows = rows[torch.randperm(len(rows), generator=generator(seed))[:keep].sort().values]
    return data.subset(rows, name=f"{data.name}[{recipe.name}]")


def recipe_training(recipe: PanelRecipe, epochs: int, batch_size: int, seed: int) -> TrainConfig:
    """The trainer's settings of ``recipe`` at ``epochs`` (scaled by the recipe)."""
    return TrainConfig(epochs=max(1, math.ceil(recipe.epochs_scale * epochs)), batch_size=batch_size,
                       optimizer=recipe.optimizer, lr=recipe.lr, augmentation=recipe.augmentation, seed=seed)


def member_data(member: PanelMember, defender: ImageDataset, excluded: torch.Tensor | None) -> ImageDataset:
    """The defender rows ``member`` trains on (:func:`recipe_data`)."""
    return recipe_data(member.recipe, defender, member.seed, excluded)


def member_recipe(member: PanelMember, config: PanelConfig, data: ImageDataset, excluded: torch.Tensor | None) -> dict:
    """What determines the member's model: its store key."""
    return {"kind": "panel", "arch": member.arch, "recipe": dataclasses.asdict(member.recipe),
            "replicate": member.replicate, "seed": member.seed, "epochs": member_epochs(member, config),
            "batch_size": config.batch_size, "data": data.fingerprint(),
            "excluded": None if excluded is None else hashlib.sha256(excluded.long().numpy().tobytes()).hexdigest()[:16]}


def member_epochs(member: PanelMember, config: PanelConfig) -> int:
    return recipe_training(member.recipe, config.epochs, config.batch_size, member.seed).epochs


def train_member(member: PanelMember, config: PanelConfig, defender: ImageDataset, test: ImageDataset,
                 excluded: torch.Tensor | None) -> tuple[Classifier, dict[str, Any]]:
    """Train one panel model through the one trainer."""
    data = member_data(member, defender, excluded)
    model = fresh_model(member.arch, data, member.seed)
    training = recipe_training(member.recipe, config.epochs, config.batch_size, member.seed)
    record = train(model, data, training, description=f"null panel: {member.name}")
    return model.eval(), {"training": record.to_dict(), "test_accuracy": round(evaluate(model, test), 4)}


# A store of panel models: (member recipe, build) -> (model, info). The benchmark passes its cache.
Store = Callable[[dict, Callable[[], tuple[Classifier, dict]]], tuple[Classifier, dict]]


def directory_store(root: str | Path, classes: list[str]) -> Store:
    store = ModelStore(root)

    def get(recipe: dict, build: Callable[[], tuple[Classifier, dict]]) -> tuple[Classifier, dict]:
        model, entry = store.model(recipe, build, classes)
        return model, entry["info"]

    return get


@dataclass
class TrainedMember:
    member: PanelMember
    model: Classifier
    info: dict
    key: dict


def train_panel(config: PanelConfig, victim_arch: str, defender: ImageDataset, test: ImageDataset, *,
                excluded: torch.Tensor | None = None, store: Store | None = None) -> list[TrainedMember]:
    """Every member of the panel, from the store or trained now (and stored)."""
    store = store or directory_store(config.store_path(), list(defender.classes))
    trained = []
    for member in panel_members(config, victim_arch):
        recipe = member_recipe(member, config, member_data(member, defender, excluded), excluded)
        model, info = store(recipe, lambda m=member: train_member(m, config, defender, test, excluded))
        trained.append(TrainedMember(member, model, info, recipe))
    return trained


__all__ = ["DEFAULT_ARCHITECTURES", "FIRST_PANEL_RECIPES", "PANEL_RECIPES", "PanelConfig", "PanelMember",
           "PanelRecipe", "RECIPES", "TrainedMember", "directory_store", "member_recipe", "panel_members",
           "recipe_data", "recipe_training", "train_member", "train_panel"]
