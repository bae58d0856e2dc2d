"""The one function that builds every Verdict: evidence + a decision rule + what to judge it by.

Before any rule is applied, the gates that make "inconclusive" an answer (DESIGN: three outcomes):
1. the suspect must be a competent model of the task (clean accuracy well above chance through the
   same access), else a meta-classifier or fingerprint scores it arbitrarily;
2. for the null-panel rule: its architecture must have a panel in this setting (an unknown
   architecture — an ONNX file, an API — is compared with the panel of every architecture, and
   called stolen only if it stands out from each: its architecture could be any of them);
3. the victim itself must stand out from that panel on the same rows (the self-test): if honest
   models of that architecture already score like the victim, the feature is not external to it and
   the method has no power there;
4. the victim must carry what the method measures at all (the method's premise,
   ``OwnershipMethod.premise``: a trigger watermark whose victim never learned its trigger): a victim can
   pass the self-test on a sliver of an effect that honest models of a recipe the panel lacks also show,
   and a suspect then "stands out" for reasons that have nothing to do with the victim.

A method may ask for **corroboration** (``OwnershipMethod.corroborated_by``): a null-panel "stolen" in one setting
stands only if the same suspect is also stolen in another setting its access allows (MOVE white-box: the
black-box evidence, which the weights give without a query). Stolen iff both tests reject, with p the larger
of the two, is an intersection-union test (Berger 1982): its false-accusation rate is at most alpha whatever
the two tests' dependence.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelprove.core.verdict import INCONCLUSIVE, NOT_STOLEN, STOLEN, Verdict
from modelprove.stats.evidence import Competence, Evidence, PanelStatistics
from modelprove.stats.rules import Decision, DecisionRule, false_accusation_rates, panel_test


@dataclass
class Calibration:
    """What the protection stored to judge this evidence by, on the evidence's rows.

    ``panels``: the null panel per architecture; ``victim_statistic``: the victim's own statistic (its
    direct copy) on the same rows; ``paper_self_test``: the paper rule's result on the victim, when the
    rule is a paper's (computed at protection time); ``premise``: why the victim does not carry what the
    method measures (gate 4 above: the null-panel rule is then inconclusive).
    """

    panels: dict[str, PanelStatistics] = field(default_factory=dict)
    victim_statistic: float | None = None
    paper_self_test: dict[str, Any] | None = None
    premise: str | None = None  # why the victim does not carry the feature (None: it does, or the method has no check)


@dataclass
class Provenance:
    """Where the verdict's inputs came from."""

    protection: str | None = None
    protection_id: str | None = None
    hashes: dict[str, str] = field(default_factory=dict)


def build_verdict(
    evidence: Evidence | None,
    rule: DecisionRule,
    *,
    suspect: str,
    alpha: float,
    seed: int | None,
    start: float,
    method: str | None = None,
    setting: str | None = None,
    blocked: str | None = None,
    calibration: Calibration | None = None,
    competence: Competence | None = None,
    provenance: Provenance | None = None,
    details: dict[str, Any] | None = None,
    corroboration: Verdict | None = None,
) -> Verdict:
    """The verdict of ``rule`` on ``evidence``, after the gates above; ``start`` is the
    ``time.perf_counter()`` at which verification began.

    Without evidence (the suspect failed the competence check, or ``blocked`` says why the method cannot
    score it here) the verdict is inconclusive; ``method`` and ``setting`` then name what was asked.
    """
    calibration = calibration or Calibration()
    provenance = provenance or Provenance()
    panel_record = self_test = None
    queries = None if evidence is None else evidence.queries
    if competence is not None and competence.queries is not None:
        queries = (queries or 0) + competence.queries

    decision: Decision
    if competence is not None and not competence.competent:
        decision = _inconclusive(
            f"the suspect is not a competent model of the task: top-1 accuracy {competence.accuracy:.3f} on "
            f"{competence.images} held-out clean images (chance {competence.chance:.3f}; a verdict needs "
            f">= {competence.threshold:.3f}), so what the method measures on it says nothing about its origin.")
    elif evidence is None:
        decision = _inconclusive(blocked or "no evidence could be measured.")
    elif rule.uses_panel:
        decision, panel_record, self_test = _panel_decision(evidence, rule, alpha, calibration)
    else:
        decision = rule.decide(evidence, alpha)
        self_test = calibration.paper_self_test
    if corroboration is not None and evidence is not None:
        decision = _corroborated(decision, corroboration, evidence.setting)

    if evidence is None:
        return Verdict(
            method=method or "?", setting=setting or "?", suspect=suspect, outcome=decision.outcome,
            reason=decision.reason, rule=rule.name, p_value=None, alpha=alpha, statistic=None, statistic_name="",
            effect=None, effect_name=decision.effect_name, samples=0, queries=queries,
            seconds=round(time.perf_counter() - start, 3),
            competence=None if competence is None else competence.to_dict(), seed=seed,
            protection=provenance.protection, protection_id=provenance.protection_id, hashes=dict(provenance.hashes),
            details=dict(details or {}))
    return Verdict(
        method=evidence.method,
        setting=evidence.setting,
        suspect=suspect,
        outcome=decision.outcome,
        reason=decision.reason,
        rule=rule.name,
        p_value=decision.p_value,
        alpha=alpha,
        statistic=evidence.statistic,
        statistic_name=evidence.statistic_name,
        effect=decision.effect,
        effect_name=decision.effect_name,
        samples=evidence.m,
        queries=queries,
        seconds=round(time.perf_counter() - start, 3),
        panel=panel_record,
        self_test=self_test,
        competence=None if competence is None else competence.to_dict(),
        evidence={"variant": evidence.variant, "rows": evidence.rows.tolist(),
                  "suspect_scores": [round(float(s), 6) for s in evidence.scores],
                  **({"reference_scores": [round(float(s), 6) for s in evidence.paired[1]],
                      "paired_suspect_scores": [round(float(s), 6) for s in evidence.paired[0]]}
                     if evidence.paired is not None else {}),
                  "reference": evidence.reference_name, "suspect_arch": evidence.suspect_arch},
        seed=seed,
        protection=provenance.protection,
        protection_id=provenance.protection_id,
        hashes=dict(provenance.hashes),
        details={**evidence.details, **decision.details, **(details or {})},
    )


def _corroborated(decision: Decision, other: Verdict, setting: str) -> Decision:
    """The intersection-union test: ``decision``'s "stolen" stands only if ``other`` (the same suspect's verdict
    in the corroborating setting) is stolen too; p is then the larger of the two."""
    record = {"setting": other.setting, "outcome": other.outcome, "p_value": other.p_value,
              "statistic": other.statistic, "reason": other.reason}
    details = {**decision.details, "corroboration": record}
    if decision.outcome != STOLEN:
        return Decision(decision.outcome, decision.p_value, decision.effect, decision.effect_name, decision.reason, details)
    if other.outcome == STOLEN:
        return Decision(STOLEN, max(decision.p_value or 0.0, other.p_value or 0.0), decision.effect,
                        decision.effect_name, decision.reason + f" Corroborated {other.setting}: {other.reason}", details)
    outcome = NOT_STOLEN if other.outcome == NOT_STOLEN else INCONCLUSIVE
    return Decision(outcome, other.p_value if outcome == NOT_STOLEN else None, decision.effect, decision.effect_name,
                    f"{decision.reason} But a {setting} accusation needs the {other.setting} evidence too, and there "
                    f"{other.reason[0].lower()}{other.reason[1:]}", details)


def _inconclusive(reason: str, **details: Any) -> Decision:
    return Decision(INCONCLUSIVE, None, None, "panel_z", reason, details)


def _panel_decision(evidence: Evidence, rule: DecisionRule, alpha: float,
                    calibration: Calibration) -> tuple[Decision, dict | None, dict | None]:
    panels = calibration.panels
    arch = evidence.suspect_arch
    if not panels:
        return _inconclusive(f"the protection has no null panel for {evidence.setting} verification "
                             f"({evidence.variant}); protect again with a panel, or use rule=paper."), None, None
    if arch is not None and arch not in panels:
        return _inconclusive(
            f"no null panel of architecture {arch} for {evidence.setting} verification (panels: "
            f"{', '.join(sorted(panels))}): honest {arch} models were never measured, so nothing says what they score."
        ), None, None
    candidates = [panels[arch]] if arch is not None else [panels[a] for a in sorted(panels)]
    victim = calibration.victim_statistic

    # The self-test against each candidate panel: the victim (its direct copy) must stand out from it.
    powerless = []
    self_tests = {}
    for panel in candidates:
        if victim is None:
            continue
        test = panel_test(victim, panel, evidence.m, evidence.binary)
        self_tests[panel.architecture] = {"statistic": victim, "p_value": test.p_value,
                                          "detected": test.p_value < alpha}
        if test.p_value >= alpha:
            powerless.append((panel, test))
    if calibration.premise is not None:  # before "no power": the more basic reason (the panel is still reported)
        panel = candidates[0]
        test = panel_test(evidence.statistic, panel, evidence.m, evidence.binary)
        return (_inconclusive(calibration.premise), _panel_record(panel, evidence, alpha, test),
                self_tests.get(panel.architecture))
    if powerless:
        panel, test = powerless[0]
        which = "its architecture" if arch is not None else "the suspect's architecture is unknown, and that"
        decision = _inconclusive(
            f"{which} has no power here: honest {panel.architecture} models already score like the victim "
            f"({evidence.statistic_name} {test.mean:.3f} ± {test.sd:.3f} over {panel.k} models vs the victim's "
            f"{victim:.3f}; the victim's own p {test.p_value:.3f} >= alpha {alpha}), so the feature is not "
            f"external to {panel.architecture}.")
        return decision, _panel_record(panel, evidence, alpha, test), self_tests.get(panel.architecture)

    decisions = [(rule.decide(evidence, alpha, panel), panel) for panel in candidates]
    decision, panel = max(decisions, key=lambda item: item[0].p_value)  # composite null: the least extreme
    if arch is None and len(candidates) > 1:
        decision = Decision(decision.outcome, decision.p_value, decision.effect, decision.effect_name,
                            decision.reason + f" The suspect's architecture is unknown: it was compared with the "
                            f"panel of every architecture ({', '.join(p.architecture for p in candidates)}) and "
                            f"this is the least extreme.", decision.details)
    test = panel_test(evidence.statistic, panel, evidence.m, evidence.binary)
    return decision, _panel_record(panel, evidence, alpha, test), self_tests.get(panel.architecture)


def _panel_record(panel: PanelStatistics, evidence: Evidence, alpha: float, test) -> dict[str, Any]:
    return {
        "architecture": panel.architecture,
        "k": panel.k,
        "mean": test.mean,
        "sd": test.sd,
        "sd_used": test.sd_used,
        "statistics": [round(float(s), 6) for s in panel.statistics],
        "recipes": list(panel.recipes),
        "names": list(panel.names),
        "rank": int((np.asarray(panel.statistics) >= evidence.statistic).sum()),
        "within_sd": panel.within_sd,
        "false_accusation_rate": false_accusation_rates(panel, alpha, evidence.m, evidence.binary),
    }


__all__ = ["Calibration", "Provenance", "build_verdict", "INCONCLUSIVE", "NOT_STOLEN", "STOLEN"]
