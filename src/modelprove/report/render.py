"""One renderer, two formats: a context of sections, tables and figures, rendered by Jinja2 templates
into one self-contained HTML file (figures as data URIs, inline CSS, no script, no network) or into
Markdown with the figures written as PNG files beside it (GitHub's renderer drops data-URI images).
"""

from __future__ import annotations

import base64
import io
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import modelprove
from modelprove.core.errors import ModelproveError, ProtectionError
from modelprove.core.fileio import atomic_write_bytes, sha256_file
from modelprove.core.verdict import format_p
from modelprove.methods.protection import MANIFEST, Protection, protection_containing
from modelprove.report import plots
from modelprove.report.evidence import evidence_images
from modelprove.report.reading import INCONCLUSIVE, NOT_RECORDED, STOLEN, Reading, rate_text

FORMATS = {".html": "html", ".htm": "html", ".md": "md", ".markdown": "md"}
MARKDOWN_MARKER = "<!-- modelprove report"  # the first line of a Markdown report (invisible when rendered)
SECRETS_LEFT_OUT = ("Public version: the protection's secrets are left out — its evidence images (transformed "
                    "images, style image, key samples, fingerprint examples, trigger) and the per-sample scores. "
                    "Outcome, statistics, the panel's summary and every digest are kept.")


@dataclass
class Figure:
    """A picture of the report. ``secret`` pictures come from the protection (left out of public reports)."""

    name: str  # a slug: the file stem beside a Markdown report
    title: str
    caption: str
    data: bytes
    mime: str = "image/png"
    secret: bool = False
    src: str = ""  # set per format: a data URI (HTML) or a file name (Markdown)

    @property
    def suffix(self) -> str:
        return {"image/png": ".png", "image/jpeg": ".jpg"}.get(self.mime, ".png")


@dataclass
class Section:
    """One verdict's part of the report."""

    anchor: str
    title: str
    outcome: str
    sentence: str
    meaning: str
    false_accusations: str
    facts: list[tuple[str, str]]
    details: list[tuple[str, str]]
    standing: list[Figure]
    samples: list[Figure]
    samples_note: str
    evidence: list[Figure]
    evidence_note: str
    provenance: list[tuple[str, str]]
    command: str
    command_notes: list[str]
    protection: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    origin: str = ""  # which verdict file, which suspect file: two verdicts of one suspect and setting differ here

    @property
    def outcome_class(self) -> str:
        return {STOLEN: "stolen", INCONCLUSIVE: "inconclusive"}.get(self.outcome, "cleared")

    def figures(self) -> list[Figure]:
        return [*self.standing, *self.samples, *self.evidence]


# -- protections ----------------------------------------------------------------------------------

def is_report_file(path: Path) -> bool:
    """Whether ``path`` holds a report modelprove wrote (what --force may replace): its HTML names
    modelprove as generator, its Markdown opens with the marker comment."""
    try:
        head = Path(path).read_bytes()[:2048].decode("utf-8", errors="replace")
    except OSError:
        return False
    return '<meta name="generator" content="modelprove' in head or head.startswith(MARKDOWN_MARKER)


def check_output(path: str | Path, *, overwrite: bool) -> Path:
    """A report (or one of its picture files) may be written at ``path``: never inside a protection
    directory, never over an existing file without ``overwrite``, and then only over a report."""
    path = Path(path)
    if (protection := protection_containing(path.parent)) is not None:
        raise ProtectionError(f"refusing to write {path.name} inside this protection directory: modelprove never "
                              "writes into a protection.", path=protection, fix="choose an output path outside it.")
    if path.is_dir():
        raise ModelproveError("is a directory; a report is one file.", path=path, fix="pass a file name, e.g. report.html.")
    if path.exists():
        if not overwrite:
            raise ModelproveError("already exists; refusing to overwrite it.", path=path,
                                  fix="choose another path, or pass overwrite=True to replace it.",
                                  cli_fix="choose another output path, or pass --force to replace it.")
        if path.suffix.lower() in FORMATS and not is_report_file(path):
            raise ModelproveError("exists and is not a modelprove report; only an earlier report is replaced.",
                                  path=path, fix="choose another output path.")
    return path


def match_protections(readings: list[Reading], given: list[Path]) -> list[Protection | None]:
    """Each verdict's protection, opened read-only (every file hash-checked): one of ``given`` that the
    verdict was made with (by the protection id the calibrated record states, or by its manifest's
    sha256), else the directory the verdict names, if it is still there and still the same."""
    protections = [Protection.open(directory) for directory in given]
    by_digest = {digest: p for p in protections for digest in (p.protection_id, sha256_file(p.directory / MANIFEST))}
    used, result = set(), []
    for reading in readings:
        recorded = reading.record.get("protection_id") or reading.hashes.get("protection_manifest")
        protection = by_digest.get(recorded) if recorded else None
        if protection is None and recorded is None and len(protections) == 1:
            protection = protections[0]
            reading.notes.append("The verdict records no digest of its protection: that "
                                 f"{protection.directory} is the protection it was made with is not checked.")
        if protection is None and not given and reading.protection_path and not Path(reading.protection_path).is_dir():
            reading.notes.append(f"The protection this verdict names ({reading.protection_path}) is not found from "
                                 "here: pass --protection DIR to show its evidence images.")
        elif protection is None and not given and reading.protection_path:
            candidate = Protection.open(reading.protection_path)
            if recorded and recorded not in (candidate.protection_id, sha256_file(candidate.directory / MANIFEST)):
                reading.notes.append(f"The protection at {reading.protection_path} is not the one this verdict was "
                                     "made with (its digest differs): its evidence images are not shown.")
            else:
                protection = candidate
        if protection is not None:
            used.add(id(protection))
            if protection.method != reading.method:
                raise ProtectionError(f"this protection was made with method {protection.method!r}, but the verdict "
                                      f"{reading.source or reading.suspect} is a {reading.method!r} verdict.",
                                      path=protection.directory)
        result.append(protection)
    unused = [p for p in protections if id(p) not in used]
    if unused:
        wanted = sorted({str(r.record.get("protection_id") or r.hashes.get("protection_manifest", NOT_RECORDED))[:12]
                         for r in readings})
        raise ProtectionError(
            f"no verdict given was made with this protection (its id is {unused[0].protection_id[:12]}…; the "
            f"verdicts record {', '.join(wanted)}…).",
            path=unused[0].directory, fix="pass the protection directory the verdicts were made with.")
    return result


def _protection_summary(protection: Protection) -> dict[str, Any]:
    manifest = protection.manifest
    return {"directory": str(protection.directory), "method": protection.method, "id": protection.protection_id,
            "created": manifest.get("created", NOT_RECORDED),
            "modelprove_version": manifest.get("modelprove_version", NOT_RECORDED),
            "manifest_sha256": sha256_file(protection.directory / MANIFEST),
            "files": sorted(manifest["files"].items())}


# -- the context ----------------------------------------------------------------------------------

def _scalar(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _facts(reading: Reading) -> list[tuple[str, str]]:
    record = reading.record
    value, name = reading.statistic
    queries = record.get("queries")
    rows = [
        ("outcome", reading.outcome),
        ("rule", reading.rule),
        ("p-value", reading.p_text),
        ("alpha", NOT_RECORDED if reading.alpha is None else f"{reading.alpha:g}"),
        ("effect", reading.effect_text),
        ("statistic", NOT_RECORDED if value is None else f"{name} = {value:.4f}"),
        ("samples", str(record.get("samples", NOT_RECORDED))),
        ("queries to the suspect", "none (white-box)" if queries is None else str(queries)),
        ("verification time", f"{record['seconds']:.1f} s" if isinstance(record.get("seconds"), (int, float)) else NOT_RECORDED),
    ]
    panel = record.get("panel")
    if isinstance(panel, dict):
        spread = (f", mean {panel['mean']:.4f} ± {panel['sd']:.4f}" if isinstance(panel.get("mean"), (int, float))
                  and isinstance(panel.get("sd"), (int, float)) else "")
        rank = (f"; {panel['rank']} of them score at least the suspect's {value:.4f}"
                if isinstance(panel.get("rank"), int) and value is not None else "")
        recipes = f" (recipes: {', '.join(dict.fromkeys(panel['recipes']))})" if panel.get("recipes") else ""
        rows.append(("null panel", f"{panel.get('k', '?')} honest {panel.get('architecture', '')} models{recipes}"
                                   f"{spread}{rank}"))
        far = panel.get("false_accusation_rate")
        if isinstance(far, dict):
            rows.append(("false-accusation rate", "; ".join(
                f"{label} {rate_text(far[key], far.get(f'{key}_tested'))}" for key, label in
                (("leave_one_out", "leave-one-out"), ("leave_one_recipe_out", "leave-one-recipe-out")) if key in far)))
    else:
        rows.append(("null panel", "none in this verdict (false-accusation rate not measured)"))
    self_test = record.get("self_test")
    if isinstance(self_test, dict):
        found = {True: "detected", False: "NOT detected"}.get(self_test.get("detected"), "")
        rows.append(("self-test: the protected model verified the same way", ", ".join(part for part in (
            f"statistic {self_test['statistic']:.4f}" if isinstance(self_test.get("statistic"), (int, float)) else "",
            f"p {format_p(self_test['p_value'])}" if isinstance(self_test.get("p_value"), (int, float)) else "",
            found) if part)))
    competence = record.get("competence")
    if isinstance(competence, dict):
        c = competence
        needs = f"; a verdict needs >= {c['threshold']:.3f}" if isinstance(c.get("threshold"), (int, float)) else ""
        rows.append(("competence: the suspect's clean top-1 accuracy",
                     f"{_scalar(c.get('accuracy'))} on {c.get('images', '?')} held-out images (chance "
                     f"{_scalar(c.get('chance'))}{needs}): {'competent' if c.get('competent') else 'NOT competent'}"))
    elif "format" in record:
        rows.append(("competence (clean top-1 accuracy)", "not checked"))
    return rows


ROLE_WORDS = {"honest": "honest, independently trained models (blue circles)",
              "derived": "the protected model and models derived from it (orange squares)",
              "reference": "the paper test's reference (grey)",
              "threshold": "the decision rule's threshold (dashed)", "chance": "the chance rate (dotted)"}


def section(index: int, reading: Reading, protection: Protection | None, *, public: bool,
            evidence_shown_in: str | None = None) -> Section:
    """One verdict's section; ``evidence_shown_in`` names the earlier section that already shows the same
    protection's evidence images (they are drawn once per report)."""
    results = protection.manifest.get("results", {}) if protection is not None else {}
    marks = reading.standing(results)
    standing = plots.standing_plot(reading, marks)
    roles = [ROLE_WORDS[role] for role in ROLE_WORDS if any(m.role == role for m in marks)]
    figures = [Figure(f"v{index}-standing", "Where the suspect stands",
                      f"The suspect's statistic (diamond) against {', '.join(roles)}.", standing)] if standing else []
    samples, samples_note = [], ""
    scores = plots.scores_plot(reading)
    if public and scores:
        samples_note = "Left out of this public version (per-sample scores)."
    elif scores:
        samples.append(Figure(f"v{index}-scores", "Per-sample scores",
                              "Each verification sample's score for the suspect (and, where the paper's test pairs "
                              "it with one, for its reference on the same samples).", scores, secret=True))
    else:
        samples_note = ("Per-sample scores are not recorded in this verdict (verdicts record them from the "
                        "calibrated record on); the means are in the table above.")
    evidence, evidence_note = [], ""
    if public:
        evidence_note = "Left out of this public version: the protection's evidence images are the owner's secret."
    elif protection is None:
        evidence_note = ("No protection directory was given (--protection), so the protection's evidence images "
                         "are not shown.")
    elif evidence_shown_in is not None:
        evidence_note = f"The same protection's evidence images are shown under {evidence_shown_in}."
    else:
        galleries, attachments = evidence_images(protection)
        for j, gallery in enumerate(galleries):
            evidence.append(Figure(f"v{index}-evidence{j}", gallery.title, gallery.caption, plots.gallery_png(gallery),
                                   secret=True))
        for j, attachment in enumerate(attachments):
            evidence.append(Figure(f"v{index}-attachment{j}", attachment.title, attachment.caption,
                                   _thumbnail(attachment.path), secret=True))
        if not evidence:
            evidence_note = f"Method {protection.method} keeps no images to show."
    command, command_notes = reading.rerun(str(protection.directory) if protection is not None else None,
                                           protection.manifest if protection is not None else None)
    details = [(k, _scalar(v)) for k, v in sorted(reading.details.items())
               if isinstance(v, (str, int, float, bool)) or v is None]
    return Section(
        anchor=f"verdict-{index}", title=f"{reading.suspect} — {reading.method}, {reading.setting}",
        outcome=reading.outcome, sentence=reading.sentence(), meaning=reading.meaning(),
        false_accusations=reading.false_accusation_text(),
        facts=_facts(reading), details=details, standing=figures, samples=samples, samples_note=samples_note,
        evidence=evidence, evidence_note=evidence_note, provenance=reading.provenance(), command=command,
        command_notes=command_notes, protection=_protection_summary(protection) if protection is not None else None,
        notes=reading.notes, origin=" · ".join(
            part for part in (f"verdict {reading.source}" if reading.source else "",
                              f"suspect file {reading.suspect_path}" if reading.suspect_path else "") if part))


def _thumbnail(path: Path, size: int = 256) -> bytes:
    """A file image (the style image, the logo) ``size`` pixels on its longer side, as PNG (small ones
    enlarged pixel by pixel, so a 28-pixel logo can be seen)."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        scale = size / max(image.size)
        resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), resample)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def context(readings: list[Reading], protections: list[Protection | None], *, public: bool,
            title: str | None = None) -> dict[str, Any]:
    sections, first_shown = [], {}
    for i, (reading, protection) in enumerate(zip(readings, protections)):
        key = None if protection is None else str(protection.directory.resolve())
        sections.append(section(i + 1, reading, protection, public=public, evidence_shown_in=first_shown.get(key)))
        if key is not None:
            first_shown.setdefault(key, f"“{sections[-1].title}”")
    combined = []
    undecided = sum(r.p_value is None for r in readings)
    if len(readings) > 1:
        for name, title_, caption, data in (
                ("all-p", "All verdicts", "Each verdict's -log10 p, coloured by outcome (red stolen, green not "
                 "stolen); the black tick is its alpha: a bar past it is significant." + (
                     f" {undecided} verdict(s) without a p (inconclusive) are not drawn." if undecided else ""),
                 plots.combined_plot(readings)),
                ("p-vs-m", "How p moves with m", "Verdicts of one suspect at several m: a large m makes even a small "
                 "difference significant.", plots.p_vs_m_plot(readings))):
            if data:
                combined.append(Figure(name, title_, caption, data))
    summary = [[r.source.name if r.source else "—", r.suspect, r.method, r.setting, r.outcome,
                "—" if r.p_value is None else r.p_text, "—" if r.alpha is None else f"{r.alpha:g}",
                "—" if r.record.get("effect") is None else r.effect_text,
                "—" if r.statistic[0] is None else f"{r.statistic[0]:.4f}", str(r.record.get("samples", "—")),
                "—" if r.record.get("queries") is None else str(r.record["queries"])] for r in readings]
    first = readings[0]
    return {
        "title": title or ("Ownership verification: " + (f"suspect “{first.suspect}”" if len(readings) == 1
                                                         else f"{len(readings)} verdicts")),
        "version": modelprove.__version__,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "public": public,
        "secrets_note": SECRETS_LEFT_OUT,
        "sections": sections,
        "summary_headers": ["verdict", "suspect", "method", "setting", "outcome", "p", "alpha", "effect", "statistic", "samples",
                            "queries"],
        "summary": summary if len(readings) > 1 else [],
        "combined": combined,
    }


# -- rendering ------------------------------------------------------------------------------------

def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("modelprove.report", "templates"),
        autoescape=lambda name: bool(name) and name.endswith(".html.j2"),
        undefined=jinja2.StrictUndefined,  # a template that names a missing field fails, not prints nothing
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
    )
    env.filters["cell"] = lambda text: str(text).replace("|", "\\|").replace("\n", " ")
    return env


def all_figures(ctx: dict[str, Any]) -> list[Figure]:
    return [*ctx["combined"], *(f for s in ctx["sections"] for f in s.figures())]


def render_html(ctx: dict[str, Any], template: str = "verdicts.html.j2") -> str:
    for figure in all_figures(ctx):
        figure.src = f"data:{figure.mime};base64,{base64.b64encode(figure.data).decode('ascii')}"
    return _environment().get_template(template).render(**ctx)


def render_markdown(ctx: dict[str, Any], stem: str, template: str = "verdicts.md.j2") -> tuple[str, dict[str, bytes]]:
    """The Markdown text and the picture files it links to (name -> bytes), to be written beside it."""
    files = {}
    for figure in all_figures(ctx):
        figure.src = f"{stem}-{figure.name}{figure.suffix}"
        files[figure.src] = figure.data
    return _environment().get_template(template).render(**ctx), files


def output_format(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in ("html", "md"):
            raise ModelproveError(f"unknown report format {fmt!r}; known: html, md.", fix="pass --format html or md.")
        return fmt
    if path.suffix.lower() not in FORMATS:
        raise ModelproveError(f"cannot tell the report's format from the suffix {path.suffix!r}.", path=path,
                              fix="name it .html or .md, or pass --format html|md.")
    return FORMATS[path.suffix.lower()]


def write(ctx: dict[str, Any], out: str | Path, *, fmt: str | None = None, overwrite: bool = False,
          template: str = "verdicts") -> list[Path]:
    """Render ``ctx`` to ``out`` (and, for Markdown, its pictures beside it); -> the files written."""
    out = Path(out)
    fmt = output_format(out, fmt)
    if fmt == "html":
        check_output(out, overwrite=overwrite)
        return [atomic_write_bytes(out, render_html(ctx, f"{template}.html.j2").encode("utf-8"))]
    text, files = render_markdown(ctx, out.stem, f"{template}.md.j2")
    targets = [check_output(out, overwrite=overwrite), *(check_output(out.with_name(n), overwrite=overwrite) for n in files)]
    written = [atomic_write_bytes(out.with_name(name), data) for name, data in files.items()]
    return [atomic_write_bytes(targets[0], text.encode("utf-8")), *written]


def bench_page(run, path: Path, markdown_text: str, figures: list[tuple[str, str, bytes]]) -> Path:
    """A benchmark grid as one HTML page: bench/report.py's Markdown (tables, runs) rendered to HTML,
    and its plots, in the verdict report's layout (base template, CSS, figure macro)."""
    from markdown_it import MarkdownIt
    from markupsafe import Markup

    check_output(path, overwrite=True)  # the bench rewrites its reports on every run; never into a protection
    # Raw HTML in the grid's text (its description comes from a TOML file) is shown as text, not run.
    text = re.sub(r"<!--.*?-->\n?", "", markdown_text, flags=re.S)  # the "generated by" comment: the footer says it
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(text)
    ctx = {"title": f"Benchmark {run.config.name}", "version": modelprove.__version__,
           "generated": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "body": Markup(body),
           "combined": [Figure(f"bench{i}", title, caption, data) for i, (title, caption, data) in enumerate(figures)],
           "sections": []}
    return atomic_write_bytes(path, render_html(ctx, "bench.html.j2").encode("utf-8"))
