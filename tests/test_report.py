"""Reports a person reads (issue 18): real verdicts of tiny protections rendered to HTML and Markdown,
their content, the public switch, the output-path rules, the benchmark page, and the page in Chromium."""

from __future__ import annotations

import base64
import html as markup
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
from modelprove.methods.common import fresh_model
from modelprove.methods.protection import Protection
from modelprove.report import write_report
from modelprove.report.browser import find_chromium, screenshot
from modelprove.report.evidence import EVIDENCE_IMAGES, evidence_images
from modelprove.training import TrainConfig, train

runner = CliRunner()
DATA_URI = re.compile(r'src="(data:image/[a-z]+;base64,[A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, bars_task, tiny_panel, single_thread):
    """A tiny MOVE protection (calibrated on the session's null panel) and real verdicts made through the
    CLI, the files a user has: its victim verified as a suspect by the paper's test (a copy: STOLEN) and
    by the default null-panel rule, and an independent model."""
    defender, attacker, test = bars_task
    root = tmp_path_factory.mktemp("report")
    move.protect(defender, test, root / "protection", move.MoveConfig(arch="lenet5", epochs=12, meta_samples=30, m=8),
                 panel=tiny_panel)
    independent = badnets.new_model("lenet5", attacker, 321)
    train(independent, attacker, TrainConfig(epochs=4, seed=321), show_progress=False)
    from modelprove.models import card_for, save_model

    save_model(independent, card_for(independent, attacker.classes), root / "independent.safetensors")
    victim = root / "protection" / "victim.safetensors"
    # Not beside the suspects: a verdict named like a suspect would take the place of its card (NAME.json).
    (root / "verdicts").mkdir()
    for name, suspect, options in (("copy", victim, ["--rule", "paper"]), ("panel", victim, []),
                                   ("independent", root / "independent.safetensors", ["--access", "black-box", "--m", "30"])):
        result = runner.invoke(app, ["verify", "--protection", str(root / "protection"), "--suspect", str(suspect),
                                     *options, "--json", str(root / "verdicts" / f"{name}.json")])
        assert result.exit_code == 0, result.output
    return root


def _manifest_snapshot(directory: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(directory.iterdir())}


def test_html_report_of_a_real_verdict_says_what_was_decided_and_on_what(workspace):
    before = _manifest_snapshot(workspace / "protection")
    verdict = json.loads((workspace / "verdicts" / "copy.json").read_text())
    assert verdict["outcome"] == "stolen" and verdict["rule"].startswith("paper")  # the victim itself, MOVE's t-test
    out = workspace / "copy.html"
    write_report([workspace / "verdicts" / "copy.json"], out, protections=[workspace / "protection"])
    html = out.read_text()
    assert "is judged STOLEN from the protected model" in html and "MOVE tests whether the suspect" in html
    assert f"p {format_p(verdict['p_value'])}" in html and "paper: one-sided paired t-test" in html
    for digest in (verdict["protection_id"], verdict["hashes"]["protection_manifest"],
                   verdict["hashes"]["suspect_weights"], sha256_file(workspace / "verdicts" / "copy.json")):
        assert digest in html
    assert verdict["created"] in html and "False-accusation rate: not measured" in html  # the paper rule: no panel
    # The command to re-run names the protection and the rule, and says what the verdict does not record.
    assert f"--protection {workspace / 'protection'}" in html and "--m 8" in html and "--rule paper" in html
    assert "&lt;SUSPECT-FILE&gt;" in html and "does not record the suspect&#39;s path" in html
    assert "victim.safetensors (sha256" in html  # the name it was loaded from
    # Self-contained: no script, nothing fetched, every image inline.
    assert "<script" not in html and 'src="http' not in html and "url(" not in html
    images = DATA_URI.findall(html)
    # where it stands, per-sample scores (suspect vs B), the transformed images, the style image
    assert len(images) == html.count("<img ") == 4
    assert "Transformed images beside their originals" in html and "The secret style image" in html
    assert _manifest_snapshot(workspace / "protection") == before  # read, never written


def test_the_null_panel_and_its_measured_false_accusation_rate_are_rendered(workspace):
    record = json.loads((workspace / "verdicts" / "panel.json").read_text())
    panel = record["panel"]
    assert record["rule"] == "null-panel prediction interval" and panel["k"] == 4
    out = workspace / "panel.html"
    write_report([workspace / "verdicts" / "panel.json"], out)  # the record names its protection: found without --protection
    html = markup.unescape(out.read_text())
    far = panel["false_accusation_rate"]
    accused = round(far["leave_one_out"] * far["leave_one_out_tested"])
    assert (f"{accused} of {far['leave_one_out_tested']} accused ({far['leave_one_out']:.0%}) when each was tested "
            "against the others") in html
    assert f"4 honest {panel['architecture']} models" in html and "self-test" in html and "competence" in html
    assert record["reason"].rstrip(".") in html
    assert {"stolen": "STOLEN<", "not stolen": "NOT STOLEN<", "inconclusive": "INCONCLUSIVE<"}[record["outcome"]] in html
    assert "Transformed images beside their originals" in html  # evidence from the recorded protection
    assert "--rule" not in html.split("To verify again")[1]  # the default rule


@pytest.mark.parametrize("name", ["copy", "independent"])
def test_the_command_to_verify_again_gives_the_same_verdict(workspace, name):
    """The report's re-run command, with the suspect's file put in, reproduces the verdict (the paper
    rule white-box; the null-panel rule black-box at m = 30)."""
    import shlex

    from modelprove.report.reading import load_verdict

    suspect = {"copy": workspace / "protection" / "victim.safetensors", "independent": workspace / "independent.safetensors"}
    command, notes = load_verdict(workspace / "verdicts" / f"{name}.json").rerun()
    assert "<SUSPECT-FILE>" in command and any("sha256" in note for note in notes)
    args = shlex.split(command.replace("<SUSPECT-FILE>", shlex.quote(str(suspect[name])))
                       .replace("verdict-again.json", shlex.quote(str(workspace / f"{name}-again.json"))))
    assert args[:2] == ["modelprove", "verify"]
    result = runner.invoke(app, args[1:])
    assert result.exit_code == 0, result.output
    before, after = (json.loads(f.read_text()) for f in (workspace / "verdicts" / f"{name}.json",
                                                         workspace / f"{name}-again.json"))
    for key in ("outcome", "p_value", "statistic", "samples", "rule", "setting", "protection_id"):
        assert after[key] == before[key], key


def test_public_report_leaves_every_image_of_the_protection_out(workspace):
    private = workspace / "private.html"
    public = workspace / "public.html"
    write_report([workspace / "verdicts" / "panel.json"], private, protections=[workspace / "protection"])
    write_report([workspace / "verdicts" / "panel.json"], public, protections=[workspace / "protection"], public=True)
    private_images, public_images = set(DATA_URI.findall(private.read_text())), set(DATA_URI.findall(public.read_text()))
    assert public_images and public_images < private_images  # the plots are kept, identical
    assert len(private_images - public_images) == 3  # per-sample scores, transformed images, style image
    text = public.read_text()
    assert "Public version" in text and "Left out of this public version" in text
    assert "Per-sample scores.</strong>" in private.read_text() and "Per-sample scores.</strong>" not in text
    # None of the protection's image bytes, raw or as the style file, is in the public page.
    protection = Protection.open(workspace / "protection")
    style = next(name for name in protection.manifest["files"] if name.startswith("style."))
    style_bytes = (workspace / "protection" / style).read_bytes()
    assert base64.b64encode(style_bytes[:48]).decode() not in text
    record = json.loads((workspace / "verdicts" / "panel.json").read_text())
    assert record["protection_id"] in text and record["hashes"]["suspect_weights"] in text  # digests are kept


def test_markdown_report_writes_its_pictures_beside_it(workspace):
    out = workspace / "md" / "report.md"
    written = write_report([workspace / "verdicts" / f"{name}.json" for name in ("copy", "panel", "independent")], out,
                           protections=[workspace / "protection"])
    text = out.read_text()
    assert "data:image" not in text  # GitHub's renderer drops data-URI images: files beside the page
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert linked and {out.with_name(name) for name in linked} == set(written[1:])
    assert all(path.stat().st_size > 1000 for path in written[1:])
    assert "## All verdicts" in text and "| copy.json | victim | move | white-box | stolen |" in text
    # Both verdicts share the protection: its evidence images are drawn once.
    assert text.count("Transformed images beside their originals](") == 1 and text.count("are shown under") == 2


def test_cli_report_and_its_output_rules(workspace):
    args = ["report", str(workspace / "verdicts" / "copy.json"), "--protection", str(workspace / "protection")]
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


def test_a_report_refuses_a_protection_the_verdict_was_not_made_with(workspace, bars_task, tiny_panel, tmp_path):
    defender, _, test = bars_task
    key_watermarks.protect(defender, test, tmp_path / "keys",
                           key_watermarks.ZhangContentConfig(arch="lenet5", epochs=1, key_fraction=0.01), panel=tiny_panel)
    result = runner.invoke(app, ["report", str(workspace / "verdicts" / "copy.json"), "--protection", str(tmp_path / "keys"),
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
    assert "suspect model “victim”" in html and f"--suspect {suspect}" in html  # the command line knows the suspect
    assert "&lt;SUSPECT-FILE&gt;" not in html
    again = runner.invoke(app, ["verify", "--protection", str(workspace / "protection"), "--suspect", str(suspect),
                                "--report", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output and "verdict for" not in again.output


@pytest.mark.parametrize("method", ["badnets", "zhang-content", "cae"])
def test_evidence_images_of_other_methods(method, bars_task, tiny_panel, tmp_path, single_thread):
    """Each method's entry shows what its protection keeps: triggers stamped, key samples, fingerprints."""
    defender, _, test = bars_task
    if method == "badnets":
        badnets.protect(defender, test, tmp_path / "p", badnets.BadNetsConfig(arch="lenet5", epochs=1, verification_pool=20, m=5, m_black_box=20),
                        panel=tiny_panel)
    elif method == "zhang-content":
        key_watermarks.protect(defender, test, tmp_path / "p",
                               key_watermarks.ZhangContentConfig(arch="lenet5", epochs=1, key_fraction=0.02),
                               panel=tiny_panel)
    else:
        torch.manual_seed(0)
        source = fresh_model("lenet5", defender, 0)
        train(source, defender, TrainConfig(epochs=4, seed=0), show_progress=False)
        cae.protect(defender, test, tmp_path / "p", cae.CaeConfig(
            surrogate_archs="lenet5", reference_archs="lenet5", surrogates=1, references=1, held_out_surrogates=1,
            held_out_references=1, epochs=2, steps=30, step_size=0.02, eps=0.25, candidates=60, n=8), model=source,
            panel=tiny_panel)
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
            "panel": {"size": 4, "architectures": "cnn_small", "epochs": 1},
            "attacks": [{"label": "Direct-copy", "attack": "copy"}], "independents": [{"arch": "cnn_small", "seeds": [100]}]}
    run = run_bench(parse_bench_config(grid), tmp_path / "run", cache_dir=tmp_path / "cache", progress=False,
                    reports=[tmp_path / "grid.html"])
    html = (tmp_path / "grid.html").read_text()
    assert "<h2>Verification, black-box</h2>" in html and "<table>" in html and "Direct-copy" in html
    assert len(DATA_URI.findall(html)) == 2 and "<script" not in html  # the p-value plot and the statistic strips
    assert (tmp_path / "run" / "report.md").is_file() and len(run.records) == 4  # the Markdown report as before


# -- the page in a browser ------------------------------------------------------------------------

def _plot_pixels(png: Path, colour: str) -> tuple[int, int]:
    """(distinct colours, pixels of ``colour``) in a screenshot; the page's CSS uses none of the plots' colours."""
    from PIL import Image

    with Image.open(png) as image:
        pixels = torch.from_numpy(np.asarray(image.convert("RGB")).reshape(-1, 3).astype(np.int32))
    target = torch.tensor([int(colour[i:i + 2], 16) for i in (1, 3, 5)], dtype=torch.int32)
    return len(torch.unique(pixels, dim=0)), int(((pixels - target).abs().max(dim=1).values <= 6).sum())


@pytest.mark.skipif(find_chromium() is None, reason="Chromium is not installed (Debian: apt-get install -y chromium, "
                                                    "or `make chromium`); the page's rendering is not checked")
def test_the_report_renders_in_headless_chromium(workspace, tmp_path):
    from modelprove.report.plots import OUTCOME_COLOURS

    # The suspect's diamond in the standing plot has its outcome's colour (the copy: stolen, red).
    diamond = OUTCOME_COLOURS[json.loads((workspace / "verdicts" / "copy.json").read_text())["outcome"]]
    page = tmp_path / "page.html"
    write_report([workspace / "verdicts" / "copy.json"], page, protections=[workspace / "protection"])
    colours, seen = _plot_pixels(screenshot(page, tmp_path / "page.png", width=1200, height=1400), diamond)
    assert colours > 200 and seen > 20  # text, the outcome box, the plot, the evidence: not a blank page
    # A public page's only picture is the plot: its colour appears when the <img> loaded, and not without it.
    public = tmp_path / "public.html"
    write_report([workspace / "verdicts" / "copy.json"], public, protections=[workspace / "protection"], public=True)
    assert len(DATA_URI.findall(public.read_text())) == 1
    _, seen = _plot_pixels(screenshot(public, tmp_path / "public.png", width=1200, height=1400), diamond)
    bare = tmp_path / "bare.html"
    bare.write_text(DATA_URI.sub('src=""', public.read_text()))
    _, seen_without = _plot_pixels(screenshot(bare, tmp_path / "bare.png", width=1200, height=1400), diamond)
    assert seen > 20 and seen_without == 0
