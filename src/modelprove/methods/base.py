"""What every ownership method is: protect, open, evidence — and the calibrated verification they share.

A method (one module, one registry line) writes its protection (``build``), loads it (``open``) and
measures **evidence** on a suspect (``evidence``: per-row scores whose mean is its model-level
statistic). Everything else is here, the same for all methods:

- ``protect`` builds the method's protection in a staging directory, trains (or reuses) the task's
  **null panel** of honest models, scores the victim and every panel model on every pool row the
  method verifies with, stores those scores with a held-out clean set for the competence check, and
  moves the protection into place;
- ``verify`` checks the suspect's competence, draws the rows, asks the method for its evidence and
  hands it with the panel's scores on the same rows to a decision rule (stats.rules) and to
  stats.verdicts.build_verdict, the one function that builds every Verdict.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from modelprove.access import BLACK_BOX, LABEL_ONLY, WHITE_BOX, LabelOnlyAccess, WhiteBoxAccess, local_access
from modelprove.core.errors import ModelproveError
from modelprove.core.fileio import atomic_write_json
from modelprove.core.progress import console
from modelprove.core.seeding import generator
from modelprove.core.verdict import STOLEN, Verdict
from modelprove.data.dataset import ImageDataset
from modelprove.methods.common import open_suspect, verification_config
from modelprove.methods.panel import PanelConfig, Store, TrainedMember, train_panel
from modelprove.methods.protection import Protection, ensure_writable, install, reseal
from modelprove.models import Classifier, ModelCard, load_model, predict_labels
from modelprove.stats import (
    Calibration, Competence, DecisionRule, Evidence, NullPanelRule, PanelStatistics, Provenance, build_verdict,
    competence_threshold,
)
from modelprove.stats.sequential import (
    CLEAR_ALPHA, SequentialPairedRule, SequentialPanelRule, sequential_mean_test, sequential_paired, sequential_panel,
)

CALIBRATION_FILE = "calibration.safetensors"
COMPETENCE_IMAGES = 200
DEFAULT_COMPETENCE = 0.5  # of the way from chance to the victim's accuracy
# A sequential competence check wrongly passes an incompetent model at most this often: the check is what
# keeps a broken model's arbitrary score from being judged, so it is held to a stricter level than alpha.
COMPETENCE_ALPHA = 0.001
RULES = ("panel", "paper")


class OwnershipMethod:
    """One ownership method. Subclasses set the class attributes and implement build / open / evidence."""

    name: str
    access: tuple[str, ...]  # suspect access levels the verification works with, preferred first
    config: type  # the config dataclass
    description: str
    model_file: str = "victim.safetensors"  # the protected model inside the protection
    verify_options: tuple[str, ...] = ()  # config fields ``verify`` may change (the rest define the protection)
    inputs: tuple[str, ...] = ()  # extra protect inputs: "model" (CAE's source), "logo" (blind watermark)
    needs: dict[str, str] = {}  # setting -> the access level it needs (default: the setting itself)
    extendable: tuple[str, ...] = ()  # config fields ``extend`` may add to an existing protection
    # setting -> the setting whose null-panel verdict must agree before a "stolen" stands (stats.verdicts:
    # the intersection-union test), asked of the same suspect through the weights, without queries.
    corroborated_by: dict[str, str] = {}
    alpha_field: str = "alpha"  # the config field of the significance level (verify's --alpha)
    # Bump when a change to ``verify`` changes what it decides for this method's protections: the benchmark's
    # cells of them are then verified again (their cache key carries it; the models stay cached).
    verdict_version: int = 0

    # -- what a method writes -----------------------------------------------------------------------

    def build_extension(self, opened: Any, defender: ImageDataset, test: ImageDataset, staged: Path,
                        changes: dict[str, str]) -> dict[str, Any]:
        """Add to ``staged`` (a copy of ``opened``'s files and manifest) what ``changes`` to its ``extendable``
        fields need, without retraining the rest; -> the manifest fields to update."""
        raise ModelproveError(f"{self.name} protections cannot be extended.",
                              fix=f"protect again with the parameters you want (`modelprove protect --method {self.name}`).")

    def build(self, defender: ImageDataset, test: ImageDataset, out: Path, config: Any, *, force: bool = False,
              **inputs: Any) -> Any:
        """Write the method's own protection to ``out``; return an object with ``results`` (a dict)."""
        raise NotImplementedError

    def open(self, directory: str | Path | Protection) -> Any:
        """Load the protection for verification; the result has ``protection`` and ``config``."""
        raise NotImplementedError

    def evidence(self, opened: Any, suspect: LabelOnlyAccess, setting: str, config: Any,
                 rows: torch.Tensor | None, *, reference: bool = True) -> Evidence:
        """Per-row scores of ``suspect`` on ``rows`` of the verification pool (None: every row); with
        ``reference``, also the paper test's reference values on the same rows."""
        raise NotImplementedError

    def pool_size(self, opened: Any, config: Any, setting: str) -> int:
        raise NotImplementedError

    def paper_rule(self, opened: Any, config: Any) -> DecisionRule:
        """The paper's own test, for reproducing its tables."""
        raise NotImplementedError

    # -- what a method may refine -------------------------------------------------------------------

    def sample_size(self, config: Any, setting: str) -> int | None:
        """Rows per verification (None: every row of the pool): m white-box, m_black_box otherwise."""
        return config.m if setting == WHITE_BOX else config.m_black_box

    def variant(self, config: Any, setting: str) -> str:
        """The key of the stored panel scores this setting's evidence is comparable with."""
        return setting

    def calibration_variants(self, config: Any) -> list[tuple[str, Any]]:
        """(setting, config) pairs whose panel scores ``protect`` stores: by default each access setting."""
        return [(setting, config) for setting in self.access]

    def scorable(self, opened: Any, arch: str | None, setting: str) -> str | None:
        """Why a model of ``arch`` cannot be scored in ``setting`` (None: it can)."""
        return None

    def premise(self, opened: Any, config: Any) -> str | None:
        """Why the protection's own victim does not carry what the method measures, whatever the suspect
        (None: it does, or the method has nothing to check). The null-panel rule is then inconclusive
        (stats.verdicts, gate 4); the paper's test is left as the paper has it."""
        return None

    def protected_models(self, opened: Any, setting: str, victim: Classifier) -> list[Classifier]:
        """The models whose scores the panel's models of their architecture are compared with in ``setting``:
        the victim (MOVE white-box adds its per-architecture copies)."""
        return [victim]

    def panel_architectures(self, config: Any) -> tuple[str, ...]:
        """Architectures the null panel must hold for this protection, beyond the panel's own list."""
        return ()

    def panel_exclusions(self, opened: Any) -> torch.Tensor | None:
        """Dataset indices of defender images the null panel must not train on (None: none)."""
        return None

    def card(self, opened: Any) -> ModelCard:
        return opened.victim_card

    # -- protect ------------------------------------------------------------------------------------

    def protect(self, defender: ImageDataset, test: ImageDataset, out: str | Path, config: Any = None, *,
                force: bool = False, panel: PanelConfig | None = None, store: Store | None = None,
                **inputs: Any) -> Any:
        """The method's protection of ``defender`` data, calibrated on the task's null panel, at ``out``."""
        config = config if config is not None else self.config()
        out = Path(out)
        ensure_writable(out, force)
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
        try:
            staged = staging / out.name
            result = self.build(defender, test, staged, config, force=False, **inputs)
            started = time.perf_counter()
            summary = self.calibrate(staged, config, defender, test, panel or PanelConfig(), store)
            install(staged, out)
            if isinstance(result.results.get("seconds"), dict):  # the null panel (trained or from its store)
                result.results["seconds"]["calibration"] = round(time.perf_counter() - started, 2)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if hasattr(result, "directory"):
            result.directory = out
        result.results["calibration"] = summary
        for warning in summary["warnings"]:
            console.print(f"[bold yellow]warning:[/] {warning}", highlight=False)
        return result

    def extend(self, protection: str | Path | Protection, defender: ImageDataset, test: ImageDataset, out: str | Path,
               changes: dict[str, str], *, force: bool = False, panel: PanelConfig | None = None,
               store: Store | None = None) -> dict[str, Any]:
        """A new protection at ``out``: ``protection``'s files and parameters with ``changes`` to its
        ``extendable`` fields, built without retraining what it holds, then calibrated on the null panel again
        (the original's panel settings unless ``panel``). The original is only read; the new one has an id of its
        own and names the original's (``extended_from``). -> the new manifest's results."""
        opened = self.opened(protection)
        original = opened.protection
        unknown = sorted(set(changes) - set(self.extendable))
        if unknown or not changes:
            raise ModelproveError(f"{self.name} protections can be extended in {', '.join(self.extendable) or 'nothing'}"
                                  f"; got {', '.join(unknown) or 'no change'}.",
                                  fix="pass --set FIELD=VALUE for one of those fields, or protect again.")
        out = Path(out)
        ensure_writable(out, force)
        if out.resolve() == original.directory.resolve():
            raise ModelproveError("an extension is a new protection; it never replaces the one it extends.",
                                  fix="pass another --out.")
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
        try:
            staged = staging / out.name
            staged.mkdir()
            for name in original.manifest["files"]:
                shutil.copy2(original.path(name), staged / name)
            manifest = {k: v for k, v in original.manifest.items() if k not in ("calibration", "files")}
            manifest["extended_from"] = {"protection_id": original.protection_id, "created": original.manifest.get("created")}
            manifest["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            atomic_write_json(staged / "manifest.json", manifest)
            updates = self.build_extension(opened, defender, test, staged, changes)
            reseal(staged, **updates)
            config = Protection.open(staged).config_as(self.config)
            recorded = original.manifest.get("calibration", {}).get("panel", {}).get("config")
            panel = panel or (PanelConfig(**recorded) if recorded else PanelConfig())
            summary = self.calibrate(staged, config, defender, test, panel, store)
            install(staged, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        for warning in summary["warnings"]:
            console.print(f"[bold yellow]warning:[/] {warning}", highlight=False)
        return {**Protection.open(out).manifest.get("results", {}), "calibration": summary}

    def calibrate(self, staged: Path, config: Any, defender: ImageDataset, test: ImageDataset, panel: PanelConfig,
                  store: Store | None) -> dict[str, Any]:
        """Score the victim and the null panel on every pool row, store them and a competence set."""
        opened = self.open(Protection.open(staged))
        victim, card = load_model(staged / self.model_file)
        wanted = panel.architecture_list(victim.arch)
        missing = [arch for arch in self.panel_architectures(config) if arch not in wanted]
        if missing:
            panel = dataclasses.replace(panel, architectures=",".join(wanted + missing))
        members = train_panel(panel, victim.arch, defender, test, excluded=self.panel_exclusions(opened), store=store)
        tensors: dict[str, torch.Tensor] = {}
        variants: dict[str, Any] = {}
        warnings: list[str] = []
        alpha = getattr(config, self.alpha_field)
        for setting, variant_config in self.calibration_variants(config):
            if self.variant(variant_config, setting) in variants:
                continue
            level = self.needs.get(setting, setting)
            # Panel models are grouped by the variant their evidence reports: a method that scores several
            # architectures with models of their own (MOVE's white-box meta-classifier per architecture)
            # compares each architecture's honest models with its own protected model of that architecture.
            by_variant: dict[str, list[tuple[int, np.ndarray]]] = {}
            for i, trained in enumerate(members):
                if self.scorable(opened, trained.member.arch, setting) is None:
                    evidence = self.evidence(opened, local_access(trained.model, level, name=trained.member.name),
                                             setting, variant_config, None, reference=False)
                    by_variant.setdefault(evidence.variant, []).append((i, evidence.scores))
            for protected in self.protected_models(opened, setting, victim):
                victim_evidence = self.evidence(opened, local_access(protected, level, name="victim"), setting,
                                                variant_config, None, reference=True)
                variant = victim_evidence.variant
                scored = by_variant.get(variant, [])
                tensors[f"victim/{variant}"] = torch.from_numpy(victim_evidence.scores).float()
                if scored:
                    tensors[f"panel/{variant}"] = torch.from_numpy(np.stack([s for _, s in scored])).float()
                    tensors[f"panel/{variant}/members"] = torch.tensor([i for i, _ in scored], dtype=torch.int64)
                else:
                    warnings.append(f"{self.name} {variant}: no panel model can be scored here (panel architectures: "
                                    f"{', '.join(panel.architecture_list(victim.arch))}); its verdicts will be "
                                    "inconclusive.")
                record = {"setting": setting, "pool": int(victim_evidence.m),
                          "score_range": list(victim_evidence.score_range),
                          "statistic_name": victim_evidence.statistic_name, "architecture": protected.arch}
                record["self_test"], record["false_accusation_rate"] = self._full_pool_checks(
                    members, scored, victim_evidence, alpha)
                paper_rule = self.paper_rule(opened, variant_config)
                paper = paper_rule.decide(victim_evidence, alpha)
                record["paper_self_test"] = {"statistic": victim_evidence.statistic, "p_value": paper.p_value,
                                             "detected": paper.outcome == STOLEN, "rule": paper_rule.name}
                for arch, test_record in record["self_test"].items():
                    if not test_record["detected"]:
                        warnings.append(f"{self.name} {variant}: the victim does not stand out from honest {arch} "
                                        f"models (p {test_record['p_value']:.3f}); verdicts for {arch} suspects will "
                                        "be inconclusive.")
                for arch, far in record["false_accusation_rate"].items():
                    if far["leave_one_out"]:
                        warnings.append(f"{self.name} {variant}: {far['leave_one_out']:.0%} of the {arch} panel is "
                                        f"accused by the others (leave-one-out at alpha {alpha}).")
                variants[variant] = record
        rows = torch.randperm(len(test), generator=generator(getattr(config, "seed", 0) + 9173))[:COMPETENCE_IMAGES]
        competence_set = test.subset(rows.sort().values)
        tensors["competence/images"] = competence_set.images.contiguous()
        tensors["competence/labels"] = competence_set.labels.contiguous()
        victim_accuracy = float((predict_labels(victim, competence_set.as_float()) == competence_set.labels).float().mean())
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(staged / CALIBRATION_FILE))
        summary = {
            "panel": {"members": [self._member_record(t) for t in members], "config": dataclasses.asdict(panel)},
            "variants": variants,
            "competence": {"images": len(competence_set), "victim_accuracy": victim_accuracy,
                           "chance": _chance(competence_set.labels, card.num_classes)},
            "warnings": warnings,
        }
        reseal(staged, calibration=summary)
        return summary

    @staticmethod
    def _member_record(trained: TrainedMember) -> dict[str, Any]:
        member = trained.member
        return {"name": member.name, "arch": member.arch, "recipe": member.recipe.name, "seed": member.seed,
                "test_accuracy": trained.info.get("test_accuracy"), "key": trained.key}

    @staticmethod
    def _full_pool_checks(members: list[TrainedMember], scored: list[tuple[int, np.ndarray]], victim: Evidence,
                          alpha: float) -> tuple[dict, dict]:
        from modelprove.stats.rules import false_accusation_rates, panel_test

        self_test, rates = {}, {}
        for arch, panel in _panels(members, scored, None).items():
            test = panel_test(victim.statistic, panel, victim.m, victim.binary)
            self_test[arch] = {"statistic": victim.statistic, "panel_mean": test.mean, "panel_sd": test.sd,
                               "p_value": test.p_value, "detected": test.p_value < alpha}
            rates[arch] = false_accusation_rates(panel, alpha, victim.m, victim.binary)
        return self_test, rates

    # -- verify -------------------------------------------------------------------------------------

    def opened(self, protection: Any) -> Any:
        """``protection`` opened for this method (a path or Protection is opened and hash-checked)."""
        if isinstance(protection, (str, Path, Protection)):
            return self.open(protection)
        Protection.open_for(protection.protection, self.name)  # an opened protection of another method
        return protection

    def verify(self, protection: Any, suspect: LabelOnlyAccess | Classifier, *, setting: str | None = None,
               seed: int = 0, suspect_name: str | None = None, rule: str | None = None,
               competence: float | None = None, **options: Any) -> Verdict:
        """Is ``suspect`` derived from the protected model? The method's evidence, judged by ``rule``:
        "panel" (default: the null panel's prediction interval) or "paper" (the paper's own test).
        ``competence`` is the fraction of the way from chance to the victim's clean accuracy a suspect
        must reach to be judged at all (default 0.5; 0 turns the check off). ``options`` are the method's
        verify_options (and ``alpha``)."""
        rule = rule or "panel"
        return self.verify_rules(protection, suspect, rules=(rule,), setting=setting, seed=seed,
                                 suspect_name=suspect_name, competence=competence, **options)[rule]

    def verify_rules(self, protection: Any, suspect: LabelOnlyAccess | Classifier, *, rules: tuple[str, ...] = RULES,
                     setting: str | None = None, seed: int = 0, suspect_name: str | None = None,
                     competence: float | None = None, at_most_pool: bool = False,
                     **options: Any) -> dict[str, Verdict]:
        """One measurement of the evidence, judged by each of ``rules``: {rule: Verdict} (the benchmark
        reports the null-panel rule beside the paper's on the same queries). ``at_most_pool``: a sample size
        above the pool reads the whole pool instead of failing (a corroborating setting's default m)."""
        unknown = [r for r in rules if r not in RULES]
        if unknown or not rules:
            raise ModelproveError(f"rule must be one of {', '.join(RULES)}; got {unknown[0] if unknown else rules!r}.",
                                  fix="use rule=panel (the null panel, default) or rule=paper (the paper's test).")
        opened = self.opened(protection)
        prot: Protection = opened.protection
        if self.alpha_field != "alpha":  # --alpha names every method's significance level
            given = options.pop("alpha", None)
            if given is not None and options.get(self.alpha_field) is None:
                options[self.alpha_field] = given
        config = verification_config(opened.config, options, self.verify_options, self.name)
        fraction = DEFAULT_COMPETENCE if competence is None else float(competence)
        if not 0.0 <= fraction < 1.0:
            raise ModelproveError(f"competence must be in [0, 1), got {fraction}.",
                                  fix="use a share such as 0.5 (0 turns the competence check off).")
        suspect, name, setting = open_suspect(suspect, suspect_name=suspect_name, setting=setting, access=self.access,
                                              who=self.name, card=self.card(opened), protection=prot, needs=self.needs)
        alpha = getattr(config, self.alpha_field)
        start = time.perf_counter()
        stored = StoredCalibration.load(prot)
        provenance = Provenance(protection=str(prot.directory), protection_id=prot.protection_id,
                                hashes=prot.hashes(protected_model=self.model_file))
        decision_rules = {r: NullPanelRule() if r == "panel" else self.paper_rule(opened, config) for r in rules}

        note: dict[str, Any] = {}  # what a sequential measurement changes for every rule's verdict

        def extra() -> dict[str, Any]:  # a remote suspect's queries: the digest of every request and response
            return {"transcript": suspect.transcript.summary()} if hasattr(suspect, "transcript") else {}

        premise = self.premise(opened, config) if "panel" in rules else None

        def judged(calibration: Calibration | None, r: str) -> Calibration | None:
            """``calibration`` with the premise, for the null-panel rule (the paper's test stays the paper's)."""
            if calibration is None or r != "panel" or premise is None:
                return calibration
            return dataclasses.replace(calibration, premise=premise)

        def verdicts(evidence: Evidence | None, corroboration: Verdict | None = None, **context: Any) -> dict[str, Verdict]:
            return {r: build_verdict(evidence, decision_rules[r], suspect=name, alpha=alpha, seed=seed, start=start,
                                     provenance=provenance, method=self.name, setting=setting,
                                     calibration=judged(stored.view(evidence, r == "paper")
                                                        if stored is not None and evidence is not None else None, r),
                                     details={"suspect_access": suspect.level, **extra(), **note},
                                     corroboration=corroboration if r == "panel" else None, **context)
                    for r in rules}

        def corroborate() -> Verdict | None:
            """The null-panel verdict of the setting this one needs corroborated by (MOVE: a white-box accusation
            needs the black-box one of the same weights; stats.verdicts' intersection-union test), fixed design."""
            other = self.corroborated_by.get(setting)
            if other is None or "panel" not in rules or not isinstance(suspect, WhiteBoxAccess) \
                    or not getattr(config, "corroborate", True):
                return None
            return self.verify_rules(opened, local_access(suspect.model, self.needs.get(other, other), name=name),
                                     rules=("panel",), setting=other, seed=seed, suspect_name=name, competence=0.0,
                                     at_most_pool=True, **{k: v for k, v in options.items() if k != "sequential"})["panel"]

        batch = 10 if getattr(config, "sequential", False) else None  # the clean images a sequential check asks at once
        measured = stored.competence(suspect, setting, fraction, batch) if stored is not None and fraction > 0 else None
        if measured is not None and not measured.competent:
            return verdicts(None, competence=measured)
        blocked = self.scorable(opened, suspect.arch, setting) if setting == WHITE_BOX else None
        if blocked is None and premise is not None and "paper" not in rules:
            blocked = premise  # nothing to measure: no query is sent
        if blocked is not None:
            return verdicts(None, competence=measured, blocked=blocked)
        pool = self.pool_size(opened, config, setting)
        m = self.sample_size(config, setting)
        rows = None
        if m is not None:
            if m > pool and not at_most_pool:
                raise ModelproveError(f"m = {m} exceeds the {pool} rows of {self.name}'s verification pool.",
                                      fix=f"use m <= {pool}, or protect with a larger pool.")
            m = min(m, pool)  # a corroborating setting's default m may exceed a small pool: it reads all of it
            rows = torch.randperm(pool, generator=generator(seed))[:m]
        before = suspect.queries
        if getattr(config, "sequential", False):
            rows = rows if rows is not None else torch.randperm(pool, generator=generator(seed))
            sequential = self._sequential_evidence(opened, suspect, setting, config, rows, pool, alpha, rules, stored)
            if "paper" in sequential.results:
                decision_rules["paper"] = SequentialPairedRule(decision_rules["paper"], sequential.results["paper"])
            if "panel" in rules:  # (no result: inconclusive before any query, the rule still named)
                decision_rules["panel"] = SequentialPanelRule(decision_rules["panel"],
                                                              *sequential.results.get("panel", (None, float("nan"))))
            note["sequential_queries_sent"] = None if setting == WHITE_BOX else suspect.queries - before
            note["rows_drawn_by"] = ("the sequential tests (stats.sequential): each rule's verdict is judged on the "
                                     "rows its own test read before it stopped")
            for evidence in sequential.evidence.values():
                if evidence is not None:
                    evidence.suspect_arch = suspect.arch
                    evidence.queries = None if setting == WHITE_BOX else evidence.queries
            out, corroboration = {}, corroborate()
            for r in rules:  # each rule judged on the rows its own test read
                mine = sequential.evidence.get(r)
                plan = sequential.plan if r == "panel" else None
                calibration = judged(plan.calibration if plan is not None and mine is not None else
                                     stored.view(mine, r == "paper") if stored is not None and mine is not None
                                     else None, r)
                out[r] = build_verdict(mine, decision_rules[r], suspect=name, alpha=alpha, seed=seed, start=start,
                                       provenance=provenance, method=self.name, setting=setting,
                                       calibration=calibration, blocked=sequential.blocked.get(r),
                                       details={"suspect_access": suspect.level, **extra(), **note},
                                       competence=measured, corroboration=corroboration if r == "panel" else None)
                if plan is not None:  # the self-test on the fixed design's rows, where the claim is made
                    out[r] = dataclasses.replace(out[r], self_test=plan.self_test)
            return out
        evidence = self.evidence(opened, suspect, setting, config, rows, reference=True)
        evidence.queries = None if setting == WHITE_BOX else suspect.queries - before
        evidence.suspect_arch = suspect.arch
        return verdicts(evidence, corroborate(), competence=measured)

    def _sequential_evidence(self, opened: Any, suspect: LabelOnlyAccess, setting: str, config: Any,
                             rows: torch.Tensor, pool: int, alpha: float, rules: tuple[str, ...],
                             stored: "StoredCalibration | None") -> "_Sequential":
        """The evidence of ``rows`` (the fixed design's m rows, in their random order), queried
        ``config.sequential_batch`` at a time while some rule's sequential test is still undecided.

        Each rule's test reads the rows from the start, one batch at a time, and only rows no test has
        asked for yet are queried; each rule's verdict is judged on the rows its own test read (what a
        verification by that rule alone sends). The null-panel rule's test (stats.sequential_panel)
        queries nothing when the protection's stored scores already make its verdict inconclusive (the
        victim does not stand out from the suspect's panel on these rows: the fixed design's self-test).
        """
        from modelprove.stats.sequential import SEQUENTIAL_SHARE

        batch = config.sequential_batch
        variant = self.variant(config, setting)
        parts: list[tuple[Evidence, int]] = []  # (one batch's evidence, the queries it cost)

        def read(count: int) -> None:  # query until the first ``count`` rows are scored
            while sum(part.m for part, _ in parts) < count:
                done, before = sum(part.m for part, _ in parts), suspect.queries
                part = self.evidence(opened, suspect, setting, config, rows[done:done + batch], reference=True)
                parts.append((part, suspect.queries - before))

        def reader() -> Any:
            cursor = [0]

            def take(count: int) -> Evidence:
                read(cursor[0] + count)
                joined = _concat([part for part, _ in parts])
                piece = dataclasses.replace(joined, scores=joined.scores[cursor[0]:cursor[0] + count],
                                            rows=joined.rows[cursor[0]:cursor[0] + count],
                                            paired=None if joined.paired is None else
                                            tuple(p[cursor[0]:cursor[0] + count] for p in joined.paired))
                cursor[0] += count
                return piece

            return take

        out = _Sequential()
        if "panel" in rules:
            plan = (stored.sequential_plan(self.name, variant, rows.numpy(), suspect.arch, alpha, SEQUENTIAL_SHARE)
                    if stored is not None else None)
            if plan is None:
                out.blocked["panel"] = (f"the protection has no null panel for {setting} verification ({variant}); "
                                        "protect again with a panel, or use rule=paper.")
            elif plan.blocked is not None:
                out.blocked["panel"], out.plan = plan.blocked, plan
            else:
                take, out.plan = reader(), plan
                out.results["panel"] = (sequential_panel(lambda n: take(n).scores, critical=plan.critical,
                                                         victim=plan.victim, panel=plan.panel,
                                                         score_range=plan.score_range, alpha=alpha, batch=batch),
                                        plan.critical)
        if "paper" in rules:
            take = reader()
            first = take(min(batch, len(rows)))
            if first.paired is None:
                raise ModelproveError(f"{self.name} {setting} evidence has no paired reference, so its paper test "
                                      "cannot be asked sequentially.", fix="drop sequential=true, or use rule=panel.")
            rest = [first.paired]

            def pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
                if rest:  # the first batch, already read
                    return rest.pop()
                return take(n).paired

            priors = stored.paired_priors(variant, self.card(opened).arch) if stored is not None else (None, None)
            out.results["paper"] = sequential_paired(pairs, score_range=first.score_range,
                                                     margin=getattr(config, "margin", 0.0),
                                                     clear=config.sequential_clear, alpha=SEQUENTIAL_SHARE * alpha,
                                                     clear_alpha=CLEAR_ALPHA, batch=batch, max_samples=len(rows),
                                                     pool_size=pool, prior_above=priors[0], prior_below=priors[1])
        joined = _concat([part for part, _ in parts]) if parts else None
        for rule in rules:
            if rule in out.blocked or joined is None:
                out.evidence[rule] = None
                continue
            result = out.results.get(rule)
            used = result[0].samples if isinstance(result, tuple) else (result.samples if result else joined.m)
            piece = dataclasses.replace(joined, scores=joined.scores[:used], rows=joined.rows[:used],
                                        paired=None if joined.paired is None else
                                        tuple(p[:used] for p in joined.paired))
            piece.queries = sum(q for (part, q), end in zip(parts, np.cumsum([p.m for p, _ in parts]))
                                if end - part.m < used)
            out.evidence[rule] = piece
        return out


@dataclasses.dataclass
class _Sequential:
    """What :meth:`OwnershipMethod._sequential_evidence` measured: per rule its evidence (None: the rule
    needed no query), its test's result and why it is inconclusive without a query; the null panel's
    plan (StoredCalibration.sequential_plan)."""

    evidence: dict[str, Evidence | None] = dataclasses.field(default_factory=dict)
    results: dict[str, Any] = dataclasses.field(default_factory=dict)
    blocked: dict[str, str] = dataclasses.field(default_factory=dict)
    plan: "PanelPlan | None" = None


@dataclasses.dataclass
class PanelPlan:
    """The sequential null-panel test's inputs, from the stored scores before any query: on the fixed
    design's m rows, the panels (``calibration``, without the victim: its self-test is ``self_test``),
    the critical value, the victim's and the candidate panels' per-row scores (the bettors' priors);
    ``blocked``: why the verdict is inconclusive whatever the suspect answers."""

    calibration: Calibration
    self_test: dict[str, Any] | None
    blocked: str | None
    critical: float
    victim: np.ndarray
    panel: np.ndarray
    score_range: tuple[float, float]


def _concat(parts: list[Evidence]) -> Evidence:
    """One Evidence of consecutive batches: scores, rows and pairs joined; per-batch means in the details
    (``mu_*``) combined by batch size, the other details as the first batch had them."""
    first = parts[0]
    sizes = np.array([part.m for part in parts], dtype=np.float64)
    details = dict(first.details)
    for key, value in first.details.items():
        if key.startswith("mu_") and all(isinstance(part.details.get(key), float) for part in parts):
            details[key] = float(sum(part.details[key] * n for part, n in zip(parts, sizes)) / sizes.sum())
    paired = None if first.paired is None else tuple(np.concatenate([part.paired[i] for part in parts])
                                                     for i in range(2))
    return dataclasses.replace(first, scores=np.concatenate([part.scores for part in parts]),
                               rows=np.concatenate([part.rows for part in parts]), paired=paired, details=details)


def _chance(labels: torch.Tensor, classes: int) -> float:
    """What a constant answer scores: the largest class share."""
    return float(torch.bincount(labels, minlength=classes).max()) / max(1, len(labels))


def _panels(members: list[TrainedMember] | list[dict], scored: list[tuple[int, np.ndarray]],
            rows: np.ndarray | None) -> dict[str, PanelStatistics]:
    """Per architecture: the panel models' statistics (means of their per-row scores on ``rows``)."""
    def info(i):
        member = members[i]
        if isinstance(member, TrainedMember):
            return member.member.arch, member.member.recipe.name, member.member.name
        return member["arch"], member["recipe"], member["name"]

    by_arch: dict[str, list[tuple[float, float, str, str]]] = {}
    for i, scores in scored:
        arch, recipe, name = info(i)
        values = scores if rows is None else scores[rows]
        by_arch.setdefault(arch, []).append((float(np.mean(values)), float(np.std(values, ddof=1)) if values.size > 1
                                             else 0.0, recipe, name))
    return {arch: PanelStatistics(arch, np.array([v for v, _, _, _ in items]), tuple(r for _, _, r, _ in items),
                                  tuple(n for _, _, _, n in items), within_sd=float(np.mean([w for _, w, _, _ in items])))
            for arch, items in by_arch.items() if len(items) >= 3}


class StoredCalibration:
    """A protection's calibration: the panel's and the victim's per-row scores, and the competence set."""

    def __init__(self, record: dict[str, Any], tensors: dict[str, torch.Tensor]):
        self.record = record
        self.tensors = tensors

    @classmethod
    def load(cls, protection: Protection) -> "StoredCalibration | None":
        record = protection.manifest.get("calibration")
        if not record or CALIBRATION_FILE not in protection.manifest["files"]:
            return None
        return cls(record, load_file(str(protection.path(CALIBRATION_FILE))))

    def competence(self, suspect: LabelOnlyAccess, setting: str, fraction: float,
                   sequential_batch: int | None = None) -> Competence:
        """The suspect's top-1 accuracy on the held-out clean set, through the same access.

        With ``sequential_batch`` a queried suspect is asked ``sequential_batch`` images at a time, and the
        check stops as soon as a betting test (stats.sequential, at COMPETENCE_ALPHA) knows the accuracy
        over the set to be above the bar or below it; undecided after the whole set, the accuracy decides.
        """
        images = self.tensors["competence/images"].float() / 255
        labels = self.tensors["competence/labels"]
        record = self.record["competence"]
        threshold = competence_threshold(record["victim_accuracy"], record["chance"], fraction)
        if setting == WHITE_BOX and isinstance(suspect, WhiteBoxAccess):  # the weights are ours to run
            answers = predict_labels(suspect.model, images)
            return Competence(float((answers == labels).float().mean()), record["chance"], threshold, len(labels))
        before = suspect.queries
        if sequential_batch is None:
            answers = suspect.labels(images)
            return Competence(float((answers == labels).float().mean()), record["chance"], threshold, len(labels),
                              suspect.queries - before)
        order = torch.randperm(len(labels), generator=generator(17))
        seen = [0]

        def correct(count: int) -> np.ndarray:
            rows = order[seen[0]:seen[0] + count]
            seen[0] += count
            return (suspect.labels(images[rows]) == labels[rows]).double().numpy()

        result = sequential_mean_test(correct, min(max(threshold, 0.0), 1.0), lower=0.0, upper=1.0,
                                      alpha=COMPETENCE_ALPHA, batch=sequential_batch, max_samples=len(labels),
                                      pool_size=len(labels))
        decided = None if result.decision == "undecided" else result.decision == "above"
        return Competence(result.mean, record["chance"], threshold, result.samples, suspect.queries - before,
                          decided=decided, sequential={"decision": result.decision, "alpha": COMPETENCE_ALPHA,
                                                       "cs_lower": result.cs_lower, "cs_upper": result.cs_upper})

    def members_of(self, variant: str, arch: str | None) -> np.ndarray:
        """Indices (into the stored panel matrix) of the panel models of ``arch`` (None: every one)."""
        members = self.record["panel"]["members"]
        indices = self.tensors[f"panel/{variant}/members"].tolist()
        return np.array([j for j, i in enumerate(indices) if arch is None or members[i]["arch"] == arch], dtype=np.int64)

    def sequential_plan(self, method: str, variant: str, rows: np.ndarray, arch: str | None, alpha: float,
                        share: float) -> PanelPlan | None:
        """What the sequential null-panel test of a suspect of ``arch`` (None: unknown, compared with every
        architecture's panel, as stats.verdicts does) needs, on the fixed design's ``rows``; None
        without stored panel scores for ``variant``."""
        from modelprove.stats.rules import MIN_PANEL, critical_value, panel_test

        record = self.record["variants"].get(variant)
        if record is None or f"panel/{variant}" not in self.tensors:
            return None
        victim_all = self.tensors[f"victim/{variant}"].double().numpy()
        matrix = self.tensors[f"panel/{variant}"].double().numpy()
        binary = bool(np.isin(victim_all, (0.0, 1.0)).all() and np.isin(matrix, (0.0, 1.0)).all())
        score_range = tuple(record.get("score_range", (0.0, 1.0)))
        on_rows = Evidence(method, record["setting"], variant, record["statistic_name"], np.zeros(len(rows)), rows,
                           score_range, binary)
        view = self.view(on_rows, False)
        panels = {a: p for a, p in view.panels.items() if p.k >= MIN_PANEL}
        calibration = Calibration(panels=panels, victim_statistic=None)
        names = [arch] if arch is not None else sorted(panels)
        m, blocked, self_test = len(rows), None, None
        if arch is not None and arch not in panels:
            blocked = (f"no null panel of architecture {arch} for {record['setting']} verification (panels: "
                       f"{', '.join(sorted(panels))}): honest {arch} models were never measured, so nothing says what "
                       "they score.")
        tests = {a: panel_test(view.victim_statistic, panels[a], m, binary) for a in names if a in panels}
        for name, test in tests.items():
            if self_test is None or test.p_value > self_test["p_value"]:  # report the least detected
                self_test = {"statistic": view.victim_statistic, "p_value": test.p_value, "detected": test.p_value < alpha}
            if test.p_value >= alpha and blocked is None:
                which = "its architecture" if arch is not None else "the suspect's architecture is unknown, and that"
                blocked = (f"{which} has no power here: honest {name} models already score like the victim "
                           f"({record['statistic_name']} {test.mean:.3f} ± {test.sd:.3f} over {panels[name].k} models vs "
                           f"the victim's {view.victim_statistic:.3f} on the {m} rows; the victim's own p "
                           f"{test.p_value:.3f} >= alpha {alpha}), so the feature is not external to {name}; the "
                           "sequential test sent no query for it.")
        chosen = [a for a in names if a in panels]
        critical = max((critical_value(panels[a], m, (1 - share) * alpha, binary) for a in chosen), default=np.nan)
        members = np.concatenate([self.members_of(variant, a) for a in chosen]) if chosen else np.zeros(0, np.int64)
        return PanelPlan(calibration, self_test, blocked, float(critical), victim_all[rows], matrix[members][:, rows],
                         score_range)

    def paired_priors(self, variant: str, arch: str) -> tuple[np.ndarray | None, np.ndarray | None]:
        """What a paper's paired test expects per row of the whole pool (SequentialPairedRule's bettors):
        a copy (the victim) minus an honest reference, and an honest model minus one (the mean of the
        panel models of the victim's architecture ``arch`` stands in for the reference B)."""
        if f"panel/{variant}" not in self.tensors:
            return None, None
        honest = self.tensors[f"panel/{variant}"].double().numpy()[self.members_of(variant, arch)]
        if len(honest) < 2:
            return None, None
        reference = honest.mean(axis=0)
        return self.tensors[f"victim/{variant}"].double().numpy() - reference, honest - reference

    def view(self, evidence: Evidence, paper: bool) -> Calibration:
        variant = self.record["variants"].get(evidence.variant)
        if variant is None:
            return Calibration(paper_self_test=None)
        rows = evidence.rows
        members = self.record["panel"]["members"]
        if f"panel/{evidence.variant}" not in self.tensors:
            return Calibration(paper_self_test=variant.get("paper_self_test") if paper else None)
        matrix = self.tensors[f"panel/{evidence.variant}"].double().numpy()
        indices = self.tensors[f"panel/{evidence.variant}/members"].tolist()
        scored = [(i, matrix[j]) for j, i in enumerate(indices)]
        victim = float(self.tensors[f"victim/{evidence.variant}"].double().numpy()[rows].mean())
        return Calibration(panels=_panels(members, scored, rows), victim_statistic=victim,
                           paper_self_test=variant.get("paper_self_test") if paper else None)


__all__ = ["CALIBRATION_FILE", "OwnershipMethod", "RULES", "StoredCalibration"]
