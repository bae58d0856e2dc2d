"""Evidence a person reads: a verdict (or several, or a benchmark grid) as one self-contained HTML page
or as Markdown for the docs (issue 18).

The user's surface beside the CLI (DESIGN.md): it may import from every layer; only the CLI, the
benchmark's report entry and scripts import it. ``write_report`` renders verdict JSON files;
``write_verdict_report`` a verdict just made by ``modelprove verify``; ``write_bench_page`` a grid.
A protection is opened read-only (``Protection.open`` hash-checks every file) and never written to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelprove.report.reading import Reading, load_verdict, with_paths
from modelprove.report.render import check_output, context, match_protections, output_format, write


def write_report(verdicts: list[str | Path | Reading], out: str | Path, *, protections: list[str | Path] = (),
                 public: bool = False, fmt: str | None = None, overwrite: bool = False,
                 title: str | None = None) -> list[Path]:
    """Render ``verdicts`` (JSON paths or readings) into ``out`` (.html, or .md with its pictures beside it).

    ``protections``: directories the verdicts were made with (matched by their manifest's sha256), for the
    evidence images; a verdict that records its protection's directory finds it itself. ``public`` leaves
    the protection's secrets out (evidence images, the style image, key samples, fingerprints, per-sample
    scores). Returns the files written.
    """
    if not verdicts:
        from modelprove.core.errors import ModelproveError

        raise ModelproveError("a report needs at least one verdict.", fix="pass verdict JSON files written by "
                              "`modelprove verify --json`.")
    output_format(Path(out), fmt)  # a bad name fails before any work
    check_output(out, overwrite=overwrite)
    readings = [v if isinstance(v, Reading) else load_verdict(v) for v in verdicts]
    opened = match_protections(readings, [Path(p) for p in protections])
    return write(context(readings, opened, public=public, title=title), out, fmt=fmt, overwrite=overwrite)


def write_verdict_report(record: dict[str, Any], out: str | Path, *, protection: str | Path, suspect: str | Path,
                         json_path: str | Path | None = None, public: bool = False,
                         overwrite: bool = False) -> list[Path]:
    """The report of a verdict ``modelprove verify`` has just made: its protection and suspect paths are
    known from the command line even where the record does not carry them."""
    reading = with_paths(json_path if json_path is not None else Reading(record), protection=protection, suspect=suspect)
    return write_report([reading], out, protections=[protection], public=public, overwrite=overwrite)


def write_bench_page(run, path: str | Path, markdown_text: str, figures: list[tuple[str, str, bytes]]) -> Path:
    """A benchmark grid's page (``modelprove bench NAME --report out.html``): its Markdown tables and its
    plots, in the verdict report's layout. ``figures``: (title, caption, PNG bytes)."""
    from modelprove.report.render import bench_page

    return bench_page(run, Path(path), markdown_text, figures)


__all__ = ["Reading", "check_output", "load_verdict", "with_paths", "write_bench_page", "write_report",
           "write_verdict_report"]
