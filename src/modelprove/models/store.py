"""A content-addressed store of trained models (the benchmark's cache, the null panel's models).

An entry's key is the sha256 of its *recipe*, a JSON-able dict of everything that determines it
(data, training, method or attack parameters, seeds, and the recipe of the model it derives from),
so a second run reuses what it already made and a changed input trains anew. Labels, paper names and
other presentation fields must stay out of recipes: they change no model.

Entries are built in a hidden staging directory and renamed into place only when complete, so a
killed run never leaves a half-written entry that a later run would trust. Processes that share the
store (the benchmark's workers, several runs) may build the same entry at once: the first rename
wins, since renaming a directory onto a non-empty one fails, and the others keep the winner's entry.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelprove.core.errors import ModelproveError
from modelprove.core.fileio import atomic_write_json, read_json
from modelprove.models.card import card_for
from modelprove.models.classifier import Classifier
from modelprove.models.modelfile import load_model, save_model

# Bump when code changes what a recipe produces (2: attack students no longer start from the victim's
# initial weights; the null panel).
CACHE_FORMAT = "modelprove-bench-cache/2"
ENTRY = "entry.json"
# A staging directory untouched this long is a killed build's: the longest builds here (CAE's CEM) take
# about half an hour, and a build renames or removes its own when it ends.
STALE_STAGING_HOURS = 72.0


def recipe_key(recipe: dict[str, Any]) -> str:
    """The key of a recipe: independent of dict order, changed by any value."""
    try:
        canonical = json.dumps({"cache_format": CACHE_FORMAT, "recipe": recipe}, sort_keys=True,
                               separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ModelproveError(f"a benchmark recipe must be plain JSON data: {exc}.") from None
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


class ModelStore:
    """``model(recipe, build, classes)`` returns the cached model of ``recipe`` or builds and stores it."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def _entry_dir(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / key

    def _complete(self, directory: Path) -> dict[str, Any] | None:
        if not (directory / ENTRY).is_file():
            return None
        try:
            return read_json(directory / ENTRY, what="benchmark cache entry")
        except ModelproveError:
            return None

    def _build(self, kind: str, recipe: dict[str, Any], fill: Callable[[Path], dict[str, Any]]) -> tuple[Path, dict]:
        key = recipe_key(recipe)
        directory = self._entry_dir(kind, key)
        entry = self._complete(directory)
        if entry is not None:
            self.hits += 1
            return directory, entry
        if directory.exists():
            entry = self._complete(directory)  # another process may have renamed its entry in since we looked
            if entry is not None:
                self.hits += 1
                return directory, entry
            # An entry without its entry.json (entries arrive whole, so it never gets one): left by a crash
            # in an older layout; keep it aside.
            directory.rename(directory.with_name(f"{key}.incomplete-{time.strftime('%Y%m%d-%H%M%S')}"))
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".partial", dir=directory.parent))
        try:
            start = time.perf_counter()
            info = fill(staging)
            entry = {"key": key, "kind": kind, "recipe": recipe, "info": info,
                     "seconds": round(time.perf_counter() - start, 2),
                     "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            atomic_write_json(staging / ENTRY, entry)
            try:
                staging.rename(directory)
            except OSError:  # another process sharing the cache finished the same entry first: keep theirs
                existing = self._complete(directory)
                if existing is None:
                    raise
                shutil.rmtree(staging, ignore_errors=True)
                self.hits += 1
                return directory, existing
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self.misses += 1
        return directory, entry

    def remove_stale_staging(self, older_than_hours: float = STALE_STAGING_HOURS) -> list[Path]:
        """Remove staging directories nothing has written to for ``older_than_hours``: builds killed too
        hard to clean up after themselves (SIGKILL, a lost worker). -> what was removed."""
        cutoff = time.time() - older_than_hours * 3600
        removed = []
        for staging in self.root.glob("*/*/.*.partial"):
            try:
                newest = max(p.stat().st_mtime for p in (staging, *staging.rglob("*")))
            except FileNotFoundError:  # a build sharing the cache renamed or removed it meanwhile: alive
                continue
            if newest < cutoff:
                shutil.rmtree(staging, ignore_errors=True)
                removed.append(staging)
        return removed

    def entry_info(self, kind: str, recipe: dict[str, Any]) -> dict[str, Any] | None:
        """The ``info`` the entry of ``recipe`` was stored with, or None if it is not in the cache."""
        entry = self._complete(self._entry_dir(kind, recipe_key(recipe)))
        return None if entry is None else entry.get("info", {})

    def entry_seconds(self, kind: str, recipe: dict[str, Any]) -> float | None:
        """How long the entry of ``recipe`` took to build, or None if it is not in the cache."""
        entry = self._complete(self._entry_dir(kind, recipe_key(recipe)))
        return None if entry is None else float(entry.get("seconds", 0.0))

    def model(self, recipe: dict[str, Any], build: Callable[[], tuple[Classifier, dict[str, Any]]],
              classes: list[str]) -> tuple[Classifier, dict[str, Any]]:
        """The model of ``recipe``: loaded from the cache, or ``build()`` -> (model, info) and stored."""

        def fill(staging: Path) -> dict[str, Any]:
            model, info = build()
            save_model(model, card_for(model, classes, lineage={"bench_recipe": recipe}), staging / "model")
            return info

        directory, entry = self._build("models", recipe, fill)
        model, _ = load_model(directory / "model.safetensors")
        return model.eval(), entry
