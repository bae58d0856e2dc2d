"""The report's pictures, drawn with matplotlib's Agg canvas into PNG bytes (no display, no pyplot state)."""

from __future__ import annotations

import io
import math
from collections import defaultdict

import numpy as np

from modelprove.report.evidence import Gallery
from modelprove.report.reading import INCONCLUSIVE, STOLEN, Mark, Reading

# Plot colours; the page's CSS uses none of them, so a rendered page shows them only where a plot loaded.
HONEST, DERIVED, REFERENCE = "#1f77b4", "#ff7f0e", "#7f7f7f"
OUTCOME_COLOURS = {STOLEN: "#d62728", "not stolen": "#2ca02c", INCONCLUSIVE: "#bcbd22"}
P_CAP = 50.0  # -log10 p beyond this is drawn at the cap (the bench's plot does the same)


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def _neg_log10(p: float) -> float:
    return min(-math.log10(max(p, 1e-300)), P_CAP)


def standing_plot(reading: Reading, marks: list[Mark]) -> bytes | None:
    """The suspect's statistic on one axis with the null panel, the protected model and its copies, the
    references and the rule's thresholds: one row per group of models, lines for thresholds."""
    points = [m for m in marks if m.role not in ("threshold", "chance")]
    lines = [m for m in marks if m.role in ("threshold", "chance")]
    if not any(m.role == "suspect" for m in points) or len(marks) < 2:
        return None
    _, name = reading.statistic
    figure = _figure(8, 0.55 * len(points) + 1.5 + 0.3 * bool(lines))
    axis = figure.subplots()
    rng = np.random.default_rng(0)  # jitter only: the same page every time
    for row, mark in enumerate(reversed(points)):
        values = np.asarray(mark.values, dtype=float)
        y = row + (rng.uniform(-0.15, 0.15, len(values)) if len(values) > 1 else np.zeros(1))
        if mark.role == "suspect":
            axis.scatter(values, y, s=160, marker="D", color=OUTCOME_COLOURS[reading.outcome], edgecolor="black", zorder=3)
        else:
            colour = {"honest": HONEST, "derived": DERIVED}.get(mark.role, REFERENCE)
            axis.scatter(values, y, s=60, marker="o" if mark.role != "derived" else "s", color=colour, zorder=2)
    for mark in lines:
        axis.axvline(mark.values[0], color="black", linestyle="--" if mark.role == "threshold" else ":", linewidth=1.2,
                     label=f"{mark.label} = {mark.values[0]:.3g}")
    if lines:
        figure.legend(loc="outside lower center", ncol=len(lines), fontsize=8, frameon=False)
    values = [v for m in marks for v in m.values]
    if min(values) >= 0 and max(values) <= 1:  # rates, probabilities, mean scores: the whole [0, 1] axis
        axis.set_xlim(-0.03, 1.03)
    axis.set_yticks(range(len(points)), [m.label for m in reversed(points)], fontsize=8)
    axis.set_ylim(-0.7, len(points) - 0.3)
    axis.set_xlabel(name)
    axis.grid(axis="x", alpha=0.3)
    axis.set_title(f"Where the suspect stands: {reading.method}, {reading.setting}", fontsize=10)
    return png(figure)


def scores_plot(reading: Reading) -> bytes | None:
    """Per-sample evidence (the calibrated record's ``evidence``): the distributions of the suspect's
    scores and the paper test's reference on the same rows (e.g. MOVE's meta-classifier output for the
    suspect and for B), or, for 0/1 scores (a key sample or fingerprint example matched or not), which rows
    the suspect matched."""
    evidence = reading.record.get("evidence")
    if not isinstance(evidence, dict) or not evidence.get("suspect_scores"):
        return None
    reference = np.asarray(evidence.get("reference_scores") or [], dtype=float)
    # The paper test's pair shares one axis; the suspect's own scores may be another quantity (a gain).
    suspect = np.asarray(evidence.get("paired_suspect_scores") if len(reference) and evidence.get("paired_suspect_scores")
                         else evidence["suspect_scores"], dtype=float)
    colour = OUTCOME_COLOURS[reading.outcome]
    if not len(reference) and np.isin(suspect, (0.0, 1.0)).all():
        figure = _figure(8, 1.4)
        axis = figure.subplots()
        axis.bar(np.arange(len(suspect)), np.ones(len(suspect)), width=0.9,
                 color=[colour if v else "#d9d9d9" for v in suspect])
        axis.set_xlim(-0.6, len(suspect) - 0.4)
        axis.set_yticks([])
        axis.set_xlabel("sample (in the order verified)")
        axis.set_title(f"Matched by the suspect: {int(suspect.sum())} of {len(suspect)} (coloured)", fontsize=10)
        return png(figure)
    both = np.concatenate([suspect, reference])
    low, high = (0.0, 1.0) if both.min() >= 0 and both.max() <= 1 else (both.min(), both.max() + 1e-9)
    bins = np.linspace(low, high, 21)
    figure = _figure(8, 3)
    axis = figure.subplots()
    axis.hist(suspect, bins=bins, alpha=0.6, color=colour,
              label=f"suspect “{reading.suspect}” ({len(suspect)} samples, mean {suspect.mean():.3f})")
    if len(reference):
        axis.hist(reference, bins=bins, alpha=0.6, color=REFERENCE,
                  label=f"{evidence.get('reference') or 'reference'} (mean {reference.mean():.3f})")
    axis.set_xlabel("per-sample score")
    axis.set_ylabel("samples")
    axis.legend(fontsize=8)
    axis.set_title("Per-sample evidence", fontsize=10)
    return png(figure)


def gallery_png(gallery: Gallery) -> bytes:
    """Rows of images, one column per sample, labelled."""
    rows, columns = len(gallery.rows), len(gallery.rows[0][1])
    figure = _figure(1.1 * columns + 0.8, 1.25 * rows + 0.2)
    axes = figure.subplots(rows, columns, squeeze=False)
    for r, (label, images) in enumerate(gallery.rows):
        for c in range(columns):
            axis = axes[r][c]
            image = images[c].permute(1, 2, 0).numpy()
            axis.imshow(image[:, :, 0] if image.shape[2] == 1 else image, cmap="gray", vmin=0, vmax=255,
                        interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if c == 0:
                axis.set_ylabel(label, fontsize=8)
            if r == 0 and c < len(gallery.columns):
                axis.set_title(gallery.columns[c], fontsize=7)
    return png(figure)


def combined_plot(readings: list[Reading]) -> bytes | None:
    """Several verdicts at once: -log10 p of each, coloured by outcome, with its alpha marked."""
    shown = [r for r in readings if r.p_value is not None]
    if not shown:
        return None
    figure = _figure(8, 0.4 * len(shown) + 1.4)
    axis = figure.subplots()
    labels = [f"{r.suspect} · {r.method} · {r.setting} · m={r.record.get('samples', '?')}" for r in shown]
    if len(set(labels)) < len(labels):  # e.g. one suspect verified from its model file and from its ONNX export
        labels = [f"{label} ({r.source.name if r.source else i + 1})" for i, (label, r) in enumerate(zip(labels, shown))]
    y = np.arange(len(shown))[::-1]
    axis.barh(y, [_neg_log10(r.p_value) for r in shown], color=[OUTCOME_COLOURS[r.outcome] for r in shown])
    for row, reading in zip(y, shown):
        if reading.alpha:
            axis.plot([_neg_log10(reading.alpha)] * 2, [row - 0.4, row + 0.4], color="black", linewidth=1.5)
    axis.set_yticks(y, labels, fontsize=8)
    axis.set_xlabel(f"−log10 p (capped at {P_CAP:g}); black tick: −log10 alpha")
    axis.set_title("All verdicts: the strength of each p-value", fontsize=10)
    return png(figure)


def p_vs_m_plot(readings: list[Reading]) -> bytes | None:
    """How p moves with m: verdicts of one suspect, method and setting that differ in samples."""
    groups: dict[tuple, list[Reading]] = defaultdict(list)
    for r in readings:
        if r.p_value is not None and isinstance(r.record.get("samples"), int):
            groups[(r.suspect, r.method, r.setting, r.hashes.get("protection_manifest"))].append(r)
    groups = {k: v for k, v in groups.items() if len({r.record["samples"] for r in v}) > 1}
    if not groups:
        return None
    figure = _figure(8, 3.2)
    axis = figure.subplots()
    alphas = set()
    for (suspect, method, setting, _), group in groups.items():
        group.sort(key=lambda r: r.record["samples"])
        axis.plot([r.record["samples"] for r in group], [_neg_log10(r.p_value) for r in group], marker="o",
                  label=f"{suspect} · {method} · {setting}")
        alphas.update(r.alpha for r in group if r.alpha)
    for alpha in alphas:
        axis.axhline(_neg_log10(alpha), color="black", linestyle="--", linewidth=1)
    axis.set_xlabel("m (samples per test)")
    axis.set_ylabel("−log10 p")
    axis.legend(fontsize=8)
    axis.set_title("How p moves with m (dashed: alpha)", fontsize=10)
    return png(figure)
