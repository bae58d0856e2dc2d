"""Reports a person reads (issue 18): real verdicts of tiny protections rendered to HTML and Markdown,
their content, the public switch, the output-path rules, the benchmark page, and the page in Chromium."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from modelprove.cli.main import app
from modelprove.core.fileio import sha256_file
from modelprove.core.verdict import format_p
from modelprove.methods import badnets, cae, key_watermarks, move
from modelprove.methods.protection import Protection
from modelprove.report import load_verdict, write_report
from modelprove.report.browser import find_chromium, screenshot
from modelprove.report.evidence import EVIDENCE_IMAGES, evidence_images
from modelprove.report.reading import Reading
from modelprove.training import TrainConfig, train

runner = CliRunner()
DATA_URI = re.compile(r'src="(data:image/[a-z]+;base64,[A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, bars_task, single_thread):
    """A tiny MOVE protection, its victim verified as a suspect (a copy) and an independent model, both
    through the CLI so the verdict files are the ones a user has."""
    defender, attacker, test = bars_task
    root = tmp_path_factory.mktemp("report")
    move.protect(defender, test, root / "protection", move.MoveConfig(arch="lenet5", epochs=12, meta_samples=30, m=8))
    independent = badnets.new_model("lenet5", attacker, 321)
    train(independent, attacker, TrainConfig(epochs=4, seed=321), show_progress=False)
    from modelprove.models import card_for, save_model

    save_model(independent, card_for(independent, attacker.classes), root / "independent.safetensors")
    for name, suspect in (("copy", root / "protection" / "victim.safetensors"), ("independent", root / "independent.safetensors")):
        result = runner.invoke(app, ["verify", "--protection", str(root / "protection"), "--suspect", str(suspect),
                                     "--access", "black-box", "--m", "30", "--json", str(root / f"{name}.json")])
        assert result.exit_code == 0, result.output
    return root


def _manifest_snapshot(directory: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(directory.iterdir())}


def test_html_report_of_a_real_verdict_says_what_was_decided_and_on_what(workspace):
    before = _manifest_snapshot(workspace / "protection")
    verdict = json.loads((workspace / "copy.json").read_text())
    assert verdict["stolen"]  # the victim itself: black-box MOVE flags it
    out = workspace / "copy.html"
    write_report([workspace / "copy.json"], out, protections=[workspace / "protection"])
    html = out.read_text()
    assert "is judged STOLEN from the protected model" in html
    assert f"p = {format_p(verdict['p_value'])}" in html
    for digest in (verdict["hashes"]["protection_manifest"], verdict["hashes"]["suspect_weights"],
                   sha256_file(workspace / "copy.json")):
        assert digest in html
    assert "False-accusation rate: not measured" in html  # today's record has no null panel: said, not invented
    # The command to re-run names the protection and says what the verdict does not record (the suspect's file).
    assert f"--protection {workspace / 'protection'}" in html and "--access black-box --m 30" in html
    assert "&lt;SUSPECT-FILE&gt;" in html and "does not record the suspect&#39;s file" in html
    # Self-contained: no script, nothing fetched, every image inline.
    assert "<script" not in html and 'src="http' not in html and "url(" not in html
    images = DATA_URI.findall(html)
    assert len(images) == html.count("<img ") == 3  # the standing plot, the transformed images, the style image
    assert "Transformed images beside their originals" in html and "The secret style image" in html
    assert _manifest_snapshot(workspace / "protection") == before  # read, never written


def test_public_report_leaves_every_image_of_the_protection_out(workspace):
    record = json.loads((workspace / "copy.json").read_text())
    # A record of the calibrated shape (issue 14) carries per-sample scores: secret as well.
    scores = [round(0.9 - 0.01 * i, 4) for i in range(12)]
    record["evidence"] = {"suspect_scores": scores, "reference_scores": [0.1] * 12, "reference": "benign model B"}
    private = workspace / "private.html"
    public = workspace / "public.html"
    write_report([Reading(record)], private, protections=[workspace / "protection"])
    write_report([Reading(record)], public, protections=[workspace / "protection"], public=True)
    private_images, public_images = set(DATA_URI.findall(private.read_text())), set(DATA_URI.findall(public.read_text()))
    assert public_images and public_images < private_images  # the plots are kept, identical
    assert len(private_images - public_images) == 3  # per-sample scores, transformed images, style image
    text = public.read_text()
    assert "Public version" in text and "Left out of this public version" in text
    assert "0.89" not in text and "Per-sample scores" not in text.replace("per-sample scores", "")
    # None of the protection's image bytes, raw or as the style file, is in the public page.
    protection = Protection.open(workspace / "protection")
    style = next(name for name in protection.manifest["files"] if name.startswith("style."))
    style_bytes = (workspace / "protection" / style).read_bytes()
    assert base64.b64encode(style_bytes[:48]).decode() not in text
    assert protection.manifest["results"]["victim_test_accuracy"] is not None  # the summary numbers still show
    assert record["hashes"]["protection_manifest"] in text


def test_markdown_report_writes_its_pictures_beside_it(workspace):
    out = workspace / "md" / "report.md"
    written = write_report([workspace / "copy.json", workspace / "independent.json"], out,
                           protections=[workspace / "protection"])
    text = out.read_text()
    assert "data:image" not in text  # GitHub's renderer drops data-URI images: files beside the page
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert linked and {out.with_name(name) for name in linked} == set(written[1:])
    assert all(path.stat().st_size > 1000 for path in written[1:])
    assert "## All verdicts" in text and "| copy.json" not in text
    # Both verdicts share the protection: its evidence images are drawn once.
    assert text.count("Transformed images beside their originals](") == 1 and "are shown under" in text


def test_new_record_fields_render_the_panel_and_its_false_accusation_rate(workspace):
    """The calibrated record of issue 14 (COMMON.md's field list) on a real verdict: the null panel, the
    self-test and the outcome's reason are rendered; the rate comes from the record, as recorded."""
    record = json.loads((workspace / "independent.json").read_text())
    record.update({
        "outcome": "inconclusive", "reason": "the suspect's statistic lies inside the panel's prediction interval",
        "rule": "null-panel prediction interval", "statistic": record["details"]["mu_suspect"],
        "statistic_name": "mean meta-classifier output", "created": "2030-01-01T00:00:00Z", "modelprove_version": "9.9",
        "panel": {"architecture": "lenet5", "k": 4, "mean": 0.2, "sd": 0.05, "statistics": [0.15, 0.2, 0.22, 0.25],
                  "rank": 2, "false_accusation_rate": {"alpha": 0.01, "leave_one_out": {"accused": 0, "of": 4},
                                                        "leave_one_recipe_out": 0.25}},
        "self_test": {"statistic": 0.97, "p_value": 1e-9, "detected": True},
        "protection": str(workspace / "protection"),
    })
    out = workspace / "new.html"
    write_report([Reading(record)], out)  # the record names its protection: found without --protection
    html = out.read_text()
    assert "INCONCLUSIVE" in html and "inside the panel&#39;s prediction interval" in html
    assert "0 of 4 when each was left out in turn" in html and "25% when each training recipe was left out" in html
    assert "2030-01-01T00:00:00Z" in html and ">9.9<" in html and "null-panel prediction interval" in html
    assert "Transformed images beside their originals" in html  # evidence from the recorded protection


def test_cli_report_and_its_output_rules(workspace):
    args = ["report", str(workspace / "copy.json"), "--protection", str(workspace / "protection")]
    out = workspace / "cli.html"
    assert runner.invoke(app, [*args, "--out", str(out)]).exit_code == 0 and out.is_file()
    again = runner.invoke(app, [*args, "--out", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output and "--force" in again.output
    assert runner.invoke(app, [*args, "--out", str(out), "--force"]).exit_code == 0
    inside = runner.invoke(app, [*args, "--out", str(workspace / "protection" / "r.html")])
    assert inside.exit_code == 2 and "never writes into a protection" in inside.output
    assert not (workspace / "protection" / "r.html").exists()
    other = runner.invoke(app, ["report", str(workspace / "protection" / "manifest.json"), "--out", str(workspace / "x.html")])
    assert other.exit_code == 2 and "not a verdict" in other.output and "Traceback" not in other.output
    suffix = runner.invoke(app, [*args, "--out", str(workspace / "x.pdf")])
    assert suffix.exit_code == 2 and "--format" in suffix.output


def test_a_report_refuses_a_protection_the_verdict_was_not_made_with(workspace, bars_task, tmp_path):
    defender, _, test = bars_task
    key_watermarks.protect(defender, test, tmp_path / "keys",
                           key_watermarks.ZhangContentConfig(arch="lenet5", epochs=1, key_fraction=0.01))
    result = runner.invoke(app, ["report", str(workspace / "copy.json"), "--protection", str(tmp_path / "keys"),
                                 "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 2 and "no verdict given was made with this protection" in result.output
    assert not (tmp_path / "r.html").exists()


def test_verify_writes_its_report_and_checks_the_path_first(workspace):
    out = workspace / "verify-report.html"
    suspect = workspace / "protection" / "victim.safetensors"
    result = runner.invoke(app, ["verify", "--protection", str(workspace / "protection"), "--suspect", str(suspect),
                                 "--report", str(out)])
    assert result.exit_code == 0, result.output
    html = out.read_text()
    assert "is judged STOLEN" in html and f"--suspect {suspect}" in html  # the command line knows the suspect
    assert "&lt;SUSPECT-FILE&gt;" not in html
    again = runner.invoke(app, ["verify", "--protection", str(workspace / "protection"), "--suspect", str(suspect),
                                "--report", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output and "verdict for" not in again.output


@pytest.mark.parametrize("method", ["badnets", "zhang-content", "cae"])
def test_evidence_images_of_other_methods(method, bars_task, tmp_path, single_thread):
    """Each method's entry shows what its protection keeps: triggers stamped, key samples, fingerprints."""
    defender, _, test = bars_task
    if method == "badnets":
        badnets.protect(defender, test, tmp_path / "p", badnets.BadNetsConfig(arch="lenet5", epochs=1, verification_pool=20, m=5, m_black_box=20))
    elif method == "zhang-content":
        key_watermarks.protect(defender, test, tmp_path / "p",
                               key_watermarks.ZhangContentConfig(arch="lenet5", epochs=1, key_fraction=0.02))
    else:
        torch.manual_seed(0)
        source = cae.defender_model("lenet5", defender, 0)
        train(source, defender, TrainConfig(epochs=4, seed=0), show_progress=False)
        cae.protect(defender, test, tmp_path / "p", cae.CaeConfig(
            surrogate_archs="lenet5", reference_archs="lenet5", surrogates=1, references=1, held_out_surrogates=1,
            held_out_references=1, epochs=2, steps=30, step_size=0.02, eps=0.25, candidates=60, n=8), model=source)
    protection = Protection.open(tmp_path / "p")
    assert protection.method in EVIDENCE_IMAGES
    galleries, _ = evidence_images(protection)
    assert galleries
    rows = galleries[0].rows
    assert all(images.dtype == torch.uint8 and images.dim() == 4 for _, images in rows)
    assert len({len(images) for _, images in rows}) == 1 and len(rows[0][1]) > 0
    if method == "badnets":  # the second row is the first with BadNets' white corner square
        (_, benign), (_, triggered) = rows
        size = protection.config["patch_size"]
        assert (triggered[..., -size:, -size:] == 255).all() and torch.equal(triggered[..., :-size, :], benign[..., :-size, :])


def test_bench_html_page(tmp_path, single_thread):
    from modelprove.bench import parse_bench_config
    from modelprove.bench.runner import run_bench

    grid = {"name": "tiny", "seeds": [0], "settings": ["white-box", "black-box"],
            "data": {"dataset": "mnist-digits", "defender_limit": 300, "attacker_limit": 300, "test_limit": 200},
            "training": {"arch": "cnn_small", "epochs": 1},
            "methods": [{"name": "move", "set": {"benign_models": 1, "m": 5, "m_black_box": 10, "test_transformed": 10,
                                                 "meta_epochs": 2}}],
            "attacks": [{"label": "Direct-copy", "attack": "copy"}], "independents": [{"arch": "cnn_small", "seeds": [100]}]}
    run = run_bench(parse_bench_config(grid), tmp_path / "run", cache_dir=tmp_path / "cache", progress=False,
                    reports=[tmp_path / "grid.html"])
    html = (tmp_path / "grid.html").read_text()
    assert "<h2>Verification, black-box</h2>" in html and "<table>" in html and "Direct-copy" in html
    assert len(DATA_URI.findall(html)) == 2 and "<script" not in html  # the p-value plot and the statistic strips
    assert (tmp_path / "run" / "report.md").is_file() and len(run.records) == 4  # the Markdown report as before


# -- the page in a browser ------------------------------------------------------------------------

def _plot_pixels(png: Path) -> tuple[int, int]:
    """(distinct colours, pixels of the plots' blue) in a screenshot; the page's CSS has no such blue."""
    from PIL import Image

    with Image.open(png) as image:
        pixels = torch.from_numpy(np.asarray(image.convert("RGB")).reshape(-1, 3).astype(np.int32))
    blue = torch.tensor([0x1F, 0x77, 0xB4], dtype=torch.int32)
    return len(torch.unique(pixels, dim=0)), int(((pixels - blue).abs().max(dim=1).values <= 6).sum())


@pytest.mark.skipif(find_chromium() is None, reason="Chromium is not installed (Debian: apt-get install -y chromium, "
                                                    "or `make chromium`); the page's rendering is not checked")
def test_the_report_renders_in_headless_chromium(workspace, tmp_path):
    page = tmp_path / "page.html"
    write_report([workspace / "copy.json"], page, protections=[workspace / "protection"])
    colours, blue = _plot_pixels(screenshot(page, tmp_path / "page.png", width=1200, height=1400))
    assert colours > 200 and blue > 20  # text, the outcome box, the plot, the evidence: not a blank page
    # A public page's only picture is the plot: its colour appears when the <img> loaded, and not without it.
    public = tmp_path / "public.html"
    write_report([workspace / "copy.json"], public, protections=[workspace / "protection"], public=True)
    assert len(DATA_URI.findall(public.read_text())) == 1
    _, blue = _plot_pixels(screenshot(public, tmp_path / "public.png", width=1200, height=1400))
    bare = tmp_path / "bare.html"
    bare.write_text(DATA_URI.sub('src=""', public.read_text()))
    _, blue_without = _plot_pixels(screenshot(bare, tmp_path / "bare.png", width=1200, height=1400))
    assert blue > 20 and blue_without == 0
