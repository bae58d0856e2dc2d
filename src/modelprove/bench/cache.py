"""The benchmark's content-addressed cache: models (models.store.ModelStore) and protections.

An entry's key is the sha256 of its *recipe*, a JSON-able dict of everything that determines it
(data, training, method or attack parameters, seeds, and the recipe of the model it derives from),
so a second run reuses what it already made and a changed input trains anew. Labels, paper names and
other presentation fields must stay out of recipes: they change no model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelprove.models.store import CACHE_FORMAT, ENTRY, ModelStore, recipe_key


class BenchCache(ModelStore):
    """``model(recipe, build)`` and ``protection(recipe, build)`` return cached entries or build them."""

    def protection(self, recipe: dict[str, Any], build: Callable[[Path], dict[str, Any]]) -> tuple[Path, dict[str, Any]]:
        """The protection directory of ``recipe``: cached, or ``build(out)`` writes it to ``out`` -> info."""
        directory, entry = self._build("protections", recipe, lambda staging: build(staging / "protection"))
        return directory / "protection", entry


__all__ = ["BenchCache", "CACHE_FORMAT", "ENTRY", "recipe_key"]
