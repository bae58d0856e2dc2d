"""The command line on a tiny protection: verdicts, JSON, and one-line errors for people."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from conftest import save_npz_task
from modelprove.cli.main import app
from modelprove.methods import move
from modelprove.models import build_model, card_for, load_model, save_model

runner = CliRunner()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, bars_task, tiny_panel):
    defender, _, test = bars_task
    root = tmp_path_factory.mktemp("cli")
    save_npz_task(root, defender, test)
    result = runner.invoke(app, [
        "protect", "--method", "move", "--data", str(root / "bars_train.npz"), "--out", str(root / "prot"),
        "--attacker-fraction", "0.5", "--set", "arch=lenet5", "--set", "epochs=12",
        "--set", "meta_samples=30", "--set", "m=8", "--set", "m_black_box=8",
        "--panel-size", "4", "--panel-archs", "lenet5,cnn_small", "--panel-epochs", "3",
        "--panel-store", tiny_panel.store,
    ])
    assert result.exit_code == 0, result.output
    assert "protection id" in result.output and "self-test" in result.output
    return root


def test_protect_prints_accuracies(workspace):
    manifest = json.loads((workspace / "prot" / "manifest.json").read_text())
    assert manifest["config"]["m"] == 8 and manifest["config"]["arch"] == "lenet5"
    assert manifest["dataset"]["defender_size"] == 400


def test_verify_copy_writes_json(workspace):
    result = runner.invoke(app, ["verify", "--protection", str(workspace / "prot"),
                                 "--suspect", str(workspace / "prot" / "victim.safetensors"), "--rule", "paper",
                                 "--json", str(workspace / "v.json")])
    assert result.exit_code == 0, result.output
    assert "STOLEN" in result.output and "checked protection id" in result.output
    verdict = json.loads((workspace / "v.json").read_text())
    assert verdict["stolen"] is True and verdict["samples"] == 8 and verdict["p_value"] < 0.01
    assert verdict["rule"].startswith("paper") and verdict["outcome"] == "stolen"
    assert verdict["hashes"]["suspect_weights"] == verdict["hashes"]["protected_model"]  # the victim itself
    assert len(verdict["hashes"]["protection_manifest"]) == 64 and len(verdict["protection_id"]) == 64
    # the default rule: the null panel, with the panel it compared with (or why it could not)
    result = runner.invoke(app, ["verify", "--protection", str(workspace / "prot"),
                                 "--suspect", str(workspace / "prot" / "victim.safetensors"),
                                 "--json", str(workspace / "v2.json")])
    assert result.exit_code == 0, result.output
    default = json.loads((workspace / "v2.json").read_text())
    assert default["rule"] == "null-panel prediction interval" and default["outcome"] in ("stolen", "inconclusive")
    assert default["competence"]["competent"] is True


def test_refuses_to_overwrite_protection(workspace):
    result = runner.invoke(app, ["protect", "--data", str(workspace / "bars_train.npz"), "--out", str(workspace / "prot")])
    assert result.exit_code == 2
    assert "already exists" in result.output and "--force" in result.output


def test_an_untrained_network_or_another_architecture_is_inconclusive(workspace, bars_task):
    """Neither can be judged: the verdict says why instead of accusing or clearing."""
    from modelprove.training import TrainConfig, train

    untrained = build_model("cnn_small", 1, 4, (28, 28))
    save_model(untrained, card_for(untrained, bars_task[0].classes), workspace / "untrained.safetensors")
    trained = build_model("cnn_small", 1, 4, (28, 28))
    train(trained, bars_task[1], TrainConfig(epochs=3, seed=21), show_progress=False)
    save_model(trained, card_for(trained, bars_task[0].classes), workspace / "other.safetensors")
    for name, reason in (("untrained", "not a competent model of the task"),
                         ("other", "fitted to one architecture (lenet5); the suspect is cnn_small")):
        for rule in ("panel", "paper"):
            result = runner.invoke(app, ["verify", "--protection", str(workspace / "prot"), "--rule", rule,
                                         "--suspect", str(workspace / f"{name}.safetensors")])
            assert result.exit_code == 0, result.output
            assert "inconclusive" in result.output and reason in " ".join(result.output.split())
            assert "STOLEN" not in result.output


def test_missing_suspect_and_incomplete_protection(workspace, tmp_path):
    result = runner.invoke(app, ["verify", "--protection", str(workspace / "prot"), "--suspect", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "error:" in result.output
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["verify", "--protection", str(tmp_path / "empty"),
                                 "--suspect", str(workspace / "prot" / "victim.safetensors")])
    assert result.exit_code == 2 and "manifest.json" in result.output


def test_unknown_method_parameter(workspace, tmp_path):
    result = runner.invoke(app, ["protect", "--data", str(workspace / "bars_train.npz"), "--out", str(tmp_path / "p"),
                                 "--set", "gama=0.2"])
    assert result.exit_code == 2 and "no field 'gama'" in result.output
    assert not (tmp_path / "p").exists()


def test_unknown_panel_recipe(workspace, tmp_path):
    result = runner.invoke(app, ["protect", "--data", str(workspace / "bars_train.npz"), "--out", str(tmp_path / "p"),
                                 "--panel-recipes", "sgd-crop,rmsprop"])
    assert result.exit_code == 2 and "unknown panel recipe 'rmsprop'" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "p").exists()


def test_extend_refuses_what_it_cannot_add_and_other_data(workspace, tmp_path, bars_task):
    """protect --extend writes a new protection or nothing: a field the method cannot add, or data that is not
    the protection's, fails in one line with exit code 2 and leaves the original as it was."""
    before = (workspace / "prot" / "manifest.json").read_bytes()
    save_npz_task(tmp_path, bars_task[1], bars_task[2])  # another draw of the task: not the protection's data
    for data, pair, message in ((workspace / "bars_train.npz", "alpha=0.05", "can be extended in architectures"),
                                (tmp_path / "bars_train.npz", "architectures=cnn_small", "not the data this protection")):
        result = runner.invoke(app, ["protect", "--extend", str(workspace / "prot"), "--data", str(data),
                                     "--attacker-fraction", "0.5", "--out", str(tmp_path / "ext"), "--set", pair])
        assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
        assert "Traceback" not in result.output and not (tmp_path / "ext").exists()
    assert (workspace / "prot" / "manifest.json").read_bytes() == before


def test_listings():
    result = runner.invoke(app, ["methods"])
    assert result.exit_code == 0 and "move" in result.output and "transformation_rate" in result.output
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0 and all(a in result.output for a in ("cnn_small", "lenet5", "resnet20"))


def test_verify_black_box_from_an_onnx_export(workspace):
    onnx = workspace / "victim.onnx"
    result = runner.invoke(app, ["export", "--model", str(workspace / "prot" / "victim"), "--onnx", str(onnx)])
    assert result.exit_code == 0, result.output
    again = runner.invoke(app, ["export", "--model", str(workspace / "prot" / "victim"), "--onnx", str(onnx)])
    assert again.exit_code == 2 and "refusing to overwrite" in again.output
    result = runner.invoke(app, ["verify", "--protection", str(workspace / "prot"), "--suspect", str(onnx),
                                 "--m", "8", "--json", str(workspace / "bb.json")])
    assert result.exit_code == 0, result.output
    verdict = json.loads((workspace / "bb.json").read_text())
    assert verdict["setting"] == "black-box" and verdict["samples"] == 8
    assert verdict["queries"] == 8 * 6 + verdict["competence"]["images"]  # the evidence and the competence check


def test_verify_label_only_is_refused_naming_both_levels(workspace):
    result = runner.invoke(app, ["verify", "--protection", str(workspace / "prot"),
                                 "--suspect", str(workspace / "prot" / "victim.safetensors"), "--access", "label-only"])
    assert result.exit_code == 2
    assert "needs black-box access" in result.output and "offers only label-only" in result.output


def test_verify_budget_and_options(workspace):
    base = ["verify", "--protection", str(workspace / "prot"),
            "--suspect", str(workspace / "prot" / "victim.safetensors"), "--access", "black-box", "--m", "8"]
    over = runner.invoke(app, [*base, "--budget", "20"])
    assert over.exit_code == 2 and "query budget of 20 images" in over.output
    no_meta = runner.invoke(app, [*base, "--set", "meta_classifier=false", "--json", str(workspace / "c.json")])
    assert no_meta.exit_code == 0, no_meta.output
    assert json.loads((workspace / "c.json").read_text())["setting"] == "confidence"
