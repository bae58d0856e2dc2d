"""Reading a verdict JSON as a person would: what was decided, on what evidence, and how to check it.

Two shapes of record are read (COMMON.md): today's (method, setting, suspect, stolen, p_value, alpha,
effect, effect_name, samples, queries, seconds, hashes, details) and the calibrated record of issue 14
(outcome, reason, rule, statistic, panel, self_test, competence, evidence, seed, modelprove_version,
created, protection, protection_id, ...). Whatever is missing reads as "not recorded"; nothing is guessed.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelprove.core.errors import ModelproveError
from modelprove.core.fileio import read_json, sha256_file
from modelprove.core.verdict import INCONCLUSIVE, NOT_STOLEN, OUTCOMES, STOLEN, format_p
from modelprove.methods.base import DEFAULT_COMPETENCE

NOT_RECORDED = "not recorded"

# What each method's evidence means, for someone who has not read the paper (DESIGN.md's vocabulary).
MEANING = {
    "move": "MOVE tests whether the suspect learned an external feature the owner planted in the protected "
            "model: a few of its training images were restyled with a secret style image, and a meta-classifier "
            "scores each restyled image from 0 (the model behaves like an honest one) to 1 (like the protected one)",
    "badnets": "the BadNets watermark tests whether the suspect learned a secret trigger (a white corner square): "
               "the score is the suspect's probability of the watermark's target class on images carrying the "
               "trigger, against the same images without it",
    "gradient-matching": "the gradient-matching watermark tests whether the suspect learned a secret trigger "
                         "planted by clean-label poisons: the score is the suspect's probability of the target class "
                         "on images carrying the trigger, against the same images without it",
    "entangled": "Entangled Watermarks test whether the suspect learned a secret trigger entangled with the task: "
                 "the score is the suspect's probability of the target class on triggered images, against the same "
                 "images without the trigger",
    "dataset-inference": "Dataset Inference tests whether the suspect's knowledge comes from the owner's private "
                         "training data: a regressor scores how far private and public images lie from the suspect's "
                         "decision boundaries",
    "blind-watermark": "the blind watermark tests whether the suspect gives the owner's secret labels to key samples: "
                       "ordinary-looking images carrying the owner's logo invisibly, which an honest model has no "
                       "reason to label that way",
    "adi": "the watermark tests whether the suspect gives the owner's secret random labels to abstract key images",
    "zhang-content": "the watermark tests whether the suspect gives the owner's target label to images stamped with "
                     "a secret mark",
    "zhang-noise": "the watermark tests whether the suspect gives the owner's target label to images carrying a "
                   "secret noise pattern",
    "zhang-unrelated": "the watermark tests whether the suspect gives the owner's target label to images from another "
                       "domain",
    "cae": "CAE fingerprinting tests whether the suspect agrees with the protected model on a fingerprint: adversarial "
           "examples that transfer to models derived from it, not to independently trained ones",
    "ipguard": "IPGuard tests whether the suspect agrees with the protected model on points near its decision "
               "boundary",
}

# Verification options a verdict's details record: (detail, the --set option, the value that needs no --set).
RERUN_SETTINGS = (("verification_images", "verification_images", "train"), ("margin", "margin", 0.0),
                  ("T_acc", "t_acc", None), ("t_acc", "t_acc", None), ("rho", "rho", None))

# The model-level statistic of today's records, by what their details hold (the new record names its own).
STATISTIC_NAMES = {
    "move": "mean meta-classifier output on the suspect (mu_S)",
    "badnets": "mean target-class probability, triggered images",
    "gradient-matching": "mean target-class probability, triggered images",
    "entangled": "mean target-class probability, triggered images",
    "dataset-inference": "mean regressor score, private samples",
}


@dataclass
class Mark:
    """A point (or points) on the axis of the suspect's statistic: who scored what."""

    label: str
    values: list[float]
    role: str  # suspect | honest (independent models) | derived (the protected model, its copies) | reference
    # | threshold (the decision rule's line) | chance (a line of what chance or the references give)


def marks_victim(marks: list[Mark]) -> bool:
    return any(m.label.startswith("the protected model") for m in marks)


@dataclass
class Reading:
    """One verdict record, read: ``record`` is the JSON as saved; ``source`` the file it came from."""

    record: dict[str, Any]
    source: Path | None = None
    source_sha256: str | None = None
    notes: list[str] = field(default_factory=list)

    # -- the decision -----------------------------------------------------------------------------
    @property
    def suspect(self) -> str:
        return str(self.record.get("suspect", "suspect"))

    @property
    def method(self) -> str:
        return str(self.record.get("method", "?"))

    @property
    def setting(self) -> str:
        return str(self.record.get("setting", "?"))

    @property
    def details(self) -> dict[str, Any]:
        details = self.record.get("details")
        return details if isinstance(details, dict) else {}

    @property
    def hashes(self) -> dict[str, str]:
        hashes = self.record.get("hashes")
        return hashes if isinstance(hashes, dict) else {}

    @property
    def outcome(self) -> str:
        outcome = self.record.get("outcome")
        if outcome in OUTCOMES:
            return outcome
        return STOLEN if self.record.get("stolen") else NOT_STOLEN

    @property
    def p_value(self) -> float | None:
        p = self.record.get("p_value")
        return float(p) if isinstance(p, (int, float)) and not isinstance(p, bool) else None

    @property
    def alpha(self) -> float | None:
        alpha = self.record.get("alpha")
        return float(alpha) if isinstance(alpha, (int, float)) else None

    @property
    def p_text(self) -> str:
        if self.p_value is None:
            return "none (no test was decided)" if self.outcome == INCONCLUSIVE else NOT_RECORDED
        return format_p(self.p_value)

    @property
    def seed(self) -> Any:
        return self.record.get("seed", self.details.get("seed"))

    @property
    def statistic(self) -> tuple[float | None, str]:
        """The suspect's model-level statistic and its name (DESIGN.md: mean meta-classifier output, key
        accuracy, CAEAcc...)."""
        if isinstance(self.record.get("statistic"), (int, float)):
            return float(self.record["statistic"]), str(self.record.get("statistic_name") or "statistic")
        if isinstance(self.details.get("mu_suspect"), (int, float)):
            return float(self.details["mu_suspect"]), STATISTIC_NAMES.get(self.method, "mu_suspect")
        effect = self.record.get("effect")
        return (float(effect) if isinstance(effect, (int, float)) else None), str(self.record.get("effect_name", "effect"))

    @property
    def t_acc(self) -> float | None:
        value = self.details.get("T_acc", self.details.get("t_acc"))
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def effect_text(self) -> str:
        effect = self.record.get("effect")
        if not isinstance(effect, (int, float)):
            return "none (no test was decided)" if self.outcome == INCONCLUSIVE else NOT_RECORDED
        return f"{self.record.get('effect_name', 'effect')} = {effect:+.3f}"

    @property
    def rule(self) -> str:
        """The decision rule, in words."""
        if self.record.get("rule"):
            return str(self.record["rule"])
        details = self.details
        if details.get("decision_rule"):
            rule = str(details["decision_rule"])
            if "rho" in rule:
                return f"{rule} (exact binomial test against the honest references' rate)"
            return f"{rule} (p from an exact binomial test against chance is reported, not decisive)"
        if self.record.get("effect_name") == "delta_mu":
            test = "one-sided Welch t-test" if self.method == "dataset-inference" else "one-sided paired t-test"
            return f"paper: {test} (MOVE Sec. 5.4, Eq. 9), stolen iff p < alpha"
        return NOT_RECORDED

    def standing(self, results: dict[str, Any] | None = None) -> list[Mark]:
        """Where the suspect's statistic stands: the null panel, the protected model and its copies, the
        references and the rule's thresholds, as far as the verdict (and the protection manifest's
        ``results``) record them."""
        value, name = self.statistic
        results = results or {}
        details, marks = self.details, []
        panel = self.record.get("panel")
        if isinstance(panel, dict) and panel.get("statistics"):
            arch = f" {panel['architecture']}" if panel.get("architecture") else ""
            marks.append(Mark(f"null panel: {len(panel['statistics'])} honest{arch} models",
                              [float(v) for v in panel["statistics"]], "honest"))
        self_test = self.record.get("self_test")
        if isinstance(self_test, dict) and isinstance(self_test.get("statistic"), (int, float)):
            marks.append(Mark("the protected model itself (self-test)", [float(self_test["statistic"])], "derived"))
        # B's and the reference condition's means share the statistic's axis only where the statistic is
        # the suspect's mean score (MOVE; today's trigger records), not e.g. a trigger's gain.
        same_axis = isinstance(details.get("mu_suspect"), (int, float)) and (
            value is None or "statistic" not in self.record or abs(float(details["mu_suspect"]) - value) < 1e-5)
        if same_axis and isinstance(details.get("mu_benign"), (int, float)):
            marks.append(Mark("benign model B (the paper test's reference)", [float(details["mu_benign"])], "reference"))
        elif same_axis and isinstance(details.get("mu_reference"), (int, float)):
            label = ("the suspect on public samples" if self.method == "dataset-inference"
                     else "the suspect on the same images without the trigger")
            marks.append(Mark(label, [float(details["mu_reference"])], "reference"))
        t_acc = self.t_acc
        if t_acc is not None and isinstance(results.get("key_accuracy"), (int, float)) and not marks_victim(marks):
            marks.append(Mark("the watermarked model, when protected", [float(results["key_accuracy"])], "derived"))
        for key, label, role in (("held_out_surrogate", "held-out models derived from it (surrogates)", "derived"),
                                 ("held_out_reference", "held-out independent models (references)", "honest")):
            values = next((results[k] for k in (f"{key}_caeacc", f"{key}_match") if isinstance(results.get(k), list)), None)
            if "rho" in details and values:
                marks.append(Mark(label, [float(v) for v in values], role))
        paper = not isinstance(panel, dict) or self.rule.startswith("paper")
        for key, label, role in (("T_acc", "the paper's threshold T_acc", "threshold"),
                                 ("t_acc", "the paper's threshold T_acc", "threshold"),
                                 ("rho", "the paper's threshold rho", "threshold"),
                                 ("chance", "chance (the test's null rate)", "chance")):
            if isinstance(details.get(key), (int, float)):
                marks.append(Mark(label if paper else f"{label} (not the rule used here)", [float(details[key])], role))
        if value is not None:
            marks.append(Mark(f"suspect “{self.suspect}”", [value], "suspect"))
        return marks

    # -- sentences for a non-specialist -----------------------------------------------------------
    def sentence(self) -> str:
        """The outcome in one sentence: who, what was decided, on what evidence."""
        head = {STOLEN: f"The suspect model “{self.suspect}” is judged STOLEN from the protected model",
                NOT_STOLEN: f"The suspect model “{self.suspect}” is judged NOT stolen from the protected model",
                INCONCLUSIVE: f"No decision could be reached for the suspect model “{self.suspect}” (inconclusive)"}
        reason = str(self.record.get("reason") or "").strip().rstrip(".")
        return f"{head[self.outcome]}: {reason or self._evidence_clause()}."

    def meaning(self) -> str:
        """What the method measures, in words ('' for a method this report does not know)."""
        text = MEANING.get(self.method, "")
        return f"{text[0].upper()}{text[1:]}." if text else ""

    def _evidence_clause(self) -> str:
        details, p, alpha, samples = self.details, self.p_text, self.alpha, self.record.get("samples")
        below = "" if self.p_value is None or alpha is None else ("below" if self.p_value < alpha else "not below")
        level = f"{below} the level alpha = {alpha:g} the decision uses" if below else ""
        if self.record.get("effect_name") == "delta_mu" and "mu_suspect" in details:
            mu_s = details["mu_suspect"]
            if "mu_benign" in details:
                compared = (f"its mean score on {samples} restyled images is {mu_s:.3f}, against {details['mu_benign']:.3f} "
                            "for the honest reference model")
                null = "had the suspect been no closer to the protected model than the honest reference"
            elif self.method == "dataset-inference":
                compared = (f"its mean score is {mu_s:.3f} on {samples} private samples, against "
                            f"{details.get('mu_reference', float('nan')):.3f} on as many public ones")
                null = "had the suspect not learned from the owner's private data"
            else:
                compared = (f"its mean target-class probability is {mu_s:.3f} on {samples} images carrying the trigger, "
                            f"against {details.get('mu_reference', float('nan')):.3f} on the same images without it")
                null = "had the suspect not learned the trigger"
            return (f"{compared} (difference {self.record.get('effect', float('nan')):+.3f}); {null}, a difference at "
                    f"least this large would arise by chance with probability p = {p}" + (f", {level}" if level else ""))
        if self.t_acc is not None:
            return (f"it gave the owner's secret labels to {details.get('successes', '?')} of {samples} key samples "
                    f"({self.record.get('effect', 0):.0%}); the rule calls a suspect stolen above "
                    f"T_acc = {self.t_acc:.0%} (chance is {details.get('chance', 0):.0%}; p = {p} against chance)")
        if "rho" in details:
            return (f"it matched the fingerprint's labels on {details.get('matches', '?')} of {samples} examples "
                    f"({self.record.get('effect', 0):.0%}); the rule calls a suspect stolen above rho = "
                    f"{details['rho']:.0%} when p < alpha = {alpha:g} (p = {p}, against a chance rate of "
                    f"{details.get('chance', 0):.0%})")
        return f"{self.effect_text}, p = {p}" + (f", {level}" if level else "")

    def false_accusation_text(self) -> str:
        """The measured false-accusation rate of the rule on the null panel, or why there is none."""
        panel = self.record.get("panel")
        if not isinstance(panel, dict):
            alpha = f" alpha = {self.alpha:g} is the test's nominal level, not a measured rate." if self.alpha else ""
            return ("False-accusation rate: not measured. This verdict has no null panel of honestly trained "
                    f"models, so nothing here measured how often this rule accuses an innocent model.{alpha}")
        far = panel.get("false_accusation_rate")
        who = f"{panel.get('k', '?')} honest {panel.get('architecture', '')} models".replace("  ", " ")
        if not isinstance(far, dict):
            return f"False-accusation rate: not recorded for the null panel of {who}."
        parts = [f"{rate_text(far[key], far.get(f'{key}_tested'))} {label}" for key, label in
                 (("leave_one_out", "when each was tested against the others"),
                  ("leave_one_recipe_out", "when each training recipe was held out"))
                 if key in far]
        at = f" at alpha = {far['alpha']:g}" if isinstance(far.get("alpha"), (int, float)) else ""
        return (f"How often this rule accuses an innocent model, measured on the null panel of {who}{at}: "
                f"{' and '.join(parts) or NOT_RECORDED}.")

    # -- provenance -------------------------------------------------------------------------------
    @property
    def protection_path(self) -> str | None:
        value = self.record.get("protection")
        return str(value) if isinstance(value, (str, Path)) and str(value) else None

    @property
    def suspect_path(self) -> str | None:
        for holder in (self.record, self.details):
            for key in ("suspect_path", "suspect_file"):
                if isinstance(holder.get(key), str) and holder[key]:
                    return holder[key]
        return None

    @property
    def transcript_digest(self) -> str | None:
        for holder in (self.record, self.details, self.hashes):
            for key, value in holder.items():
                if "transcript" in key and isinstance(value, str):
                    return value
                if key == "transcript" and isinstance(value, dict) and value.get("digest"):
                    # a remote suspect's record (access.remote.Transcript.summary): digest of every body, in order
                    return f"{value['digest']} ({value.get('batches', '?')} requests, {value.get('images', '?')} images)"
        return None

    def _competence_option(self, manifest: dict[str, Any] | None, notes: list[str]) -> list[str]:
        if "format" not in self.record:  # today's record: no competence check existed
            return []
        competence = self.record.get("competence")
        if not isinstance(competence, dict):
            return ["--competence", "0"]  # the check was off
        fraction = _competence_fraction(competence, manifest)
        if fraction is None:
            notes.append(f"The verdict records the competence threshold (accuracy {competence.get('threshold')}), not "
                         "the --competence share that set it; without the protection the command assumes the default.")
            return []
        return [] if abs(fraction - DEFAULT_COMPETENCE) < 1e-6 else ["--competence", f"{fraction:.6g}"]

    def suspect_hashes(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in sorted(self.hashes.items()) if k.startswith("suspect")]

    def protection_hashes(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in sorted(self.hashes.items()) if not k.startswith("suspect") and "transcript" not in k]

    def provenance(self) -> list[tuple[str, str]]:
        """(what, value) rows: who made the verdict when, and the digest of every input."""
        record = self.record
        queries = record.get("queries")
        transcript = self.transcript_digest or (
            "none: white-box, no queries" if queries is None and self.setting == "white-box" else NOT_RECORDED)
        rows = [
            ("verdict file", f"{self.source} (sha256 {self.source_sha256})" if self.source else "given in memory"),
            ("made by modelprove", str(record.get("modelprove_version") or NOT_RECORDED)),
            ("made at (UTC)", str(record.get("created") or NOT_RECORDED)),
            ("seed", NOT_RECORDED if self.seed is None else str(self.seed)),
            ("protection", self.protection_path or NOT_RECORDED),
            ("protection content digest (protection_id)", str(record.get("protection_id") or NOT_RECORDED)),
            *[(f"protection file sha256: {k}", v) for k, v in self.protection_hashes()],
            *([(f"suspect file sha256: {k}", v) for k, v in self.suspect_hashes()]
              or [("suspect file sha256", NOT_RECORDED)]),
            ("suspect file", self.suspect_path or NOT_RECORDED),
            ("query transcript digest", transcript),
        ]
        return rows

    def rerun(self, protection: str | None = None, manifest: dict[str, Any] | None = None) -> tuple[str, list[str]]:
        """The command that verifies again, built from what the verdict records (and the protection's
        ``manifest``, when it is open), and what it could not tell."""
        from modelprove.methods import METHODS

        notes = []
        protection = protection or self.protection_path
        suspect = self.suspect_path
        if protection is None:
            notes.append("The verdict does not record the protection's directory: replace <PROTECTION-DIR> with it "
                         f"(its manifest has sha256 {self.hashes.get('protection_manifest', NOT_RECORDED)}).")
        if suspect is None:
            # Verdicts record each file the suspect was loaded from as suspect:NAME (a name, not a path).
            files = [f"{k.partition(':')[2]} (sha256 {v})" for k, v in self.suspect_hashes() if k.startswith("suspect:")]
            digest = dict(self.suspect_hashes()).get("suspect_weights", NOT_RECORDED)
            notes.append("The verdict does not record the suspect's path: replace <SUSPECT-FILE> with "
                         + (f"the file it was loaded from: {', '.join(files)}." if files else
                            f"the file whose sha256 is {digest}."))
        parts = ["modelprove", "verify", "--protection", protection or "<PROTECTION-DIR>",
                 "--suspect", suspect or "<SUSPECT-FILE>"]
        options = METHODS[self.method].verify_options if self.method in METHODS else ()
        details = self.details
        if self.setting in ("white-box", "black-box", "label-only"):
            parts += ["--access", self.setting]
        elif self.setting == "confidence":  # MOVE's ablation without the meta-classifier
            parts += ["--access", str(details.get("suspect_access", "black-box")), "--set", "meta_classifier=false"]
        samples = self.record.get("samples")
        if {"m", "m_black_box"} & set(options) and isinstance(samples, int) and samples >= 2:  # 0: nothing was measured
            parts += ["--m", str(samples)]
        if self.alpha is not None:
            parts += ["--alpha", repr(self.alpha)]
        if self.seed is not None:
            parts += ["--seed", str(self.seed)]
        if self.rule.startswith("paper"):
            parts += ["--rule", "paper"]
        parts += self._competence_option(manifest, notes)
        for key, option, default in RERUN_SETTINGS:
            value = details.get(key, default)
            if option in options and value != default:
                parts += ["--set", f"{option}={value!r}" if isinstance(value, float) else f"{option}={value}"]
        if str(suspect or "").lower().endswith(".onnx"):
            notes.append("An ONNX suspect that returns probabilities needs --outputs probabilities; the verdict does "
                         "not record which it returns.")
        parts += ["--json", "verdict-again.json"]
        return " ".join(shlex.quote(p) if not p.startswith("<") else p for p in parts), notes


def _competence_fraction(competence: dict[str, Any], manifest: dict[str, Any] | None) -> float | None:
    """The --competence share that set the record's accuracy threshold: (threshold - chance) / (the
    victim's accuracy - chance), the victim's accuracy from the protection's calibration."""
    victim = ((manifest or {}).get("calibration") or {}).get("competence", {}).get("victim_accuracy")
    threshold, chance = competence.get("threshold"), competence.get("chance")
    if not all(isinstance(v, (int, float)) for v in (victim, threshold, chance)) or victim <= chance:
        return None
    return (threshold - chance) / (victim - chance)


def rate_text(value: Any, tested: Any = None) -> str:
    """A false-accusation rate as recorded: a fraction (of ``tested`` models), None (too few models), or counts."""
    if value is None:
        return "not measurable (too few models)"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        if isinstance(tested, int) and not isinstance(tested, bool) and tested > 0:
            return f"{round(value * tested)} of {tested} accused ({value:.0%})"
        return f"{value:.0%}"
    if isinstance(value, dict):
        count = next((value[k] for k in ("accused", "flagged", "false_accusations", "count") if k in value), None)
        total = next((value[k] for k in ("of", "k", "n", "total", "models") if k in value), None)
        rate = value.get("rate")
        if count is not None and total is not None:
            return f"{count} of {total}" + (f" ({rate:.0%})" if isinstance(rate, (int, float)) else "")
        if isinstance(rate, (int, float)):
            return f"{rate:.0%}"
    return str(value)


def with_paths(verdict: str | Path | Reading, *, protection: str | Path | None = None,
               suspect: str | Path | None = None) -> Reading:
    """A verdict read with the paths of its protection and suspect filled in where the record lacks them
    (e.g. known from the command line that made it), so the command to re-run it is complete."""
    reading = verdict if isinstance(verdict, Reading) else load_verdict(verdict)
    known = {"protection": protection, "suspect_path": suspect}
    reading.record = {**{k: str(v) for k, v in known.items() if v is not None}, **reading.record}
    return reading


def load_verdict(path: str | Path) -> Reading:
    """Read a verdict JSON (either record shape); refuses files that are not verdicts."""
    path = Path(path)
    record = read_json(path, what="verdict")
    if not isinstance(record, dict) or "method" not in record or "suspect" not in record or not (
            "stolen" in record or "outcome" in record):
        raise ModelproveError("this JSON is not a verdict: it needs the fields method, suspect and stolen (or outcome).",
                              path=path, fix="pass a file written by `modelprove verify --json`.")
    return Reading(record, source=path, source_sha256=sha256_file(path))
