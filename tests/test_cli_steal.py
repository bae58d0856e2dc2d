"""`modelprove steal` on the bars task: the suspect file, its lineage, the table, listings and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from modelprove.attacks import ATTACKS
from modelprove.cli.main import app
from modelprove.data import ImageDataset, load_splits
from modelprove.models import build_model, card_for, load_model, save_model
from modelprove.training import TrainConfig, agreement, train

runner = CliRunner()

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, bars_task):
    defender, attacker, test = bars_task
    root = tmp_path_factory.mktemp("steal")
    both = ImageDataset.concat([defender, attacker], "bars")
    for part, name in ((both, "bars_train.npz"), (test, "bars_test.npz")):
        np.savez(root / name, x=part.images.numpy(), y=part.labels.numpy())
    splits = load_splits(root / "bars_train.npz", attacker_fraction=0.5, seed=0)
    torch.manual_seed(0)
    victim = build_model("cnn_small", 1, 4, (28, 28))
    train(victim, splits.defender, TrainConfig(epochs=3), show_progress=False)
    save_model(victim, card_for(victim, splits.defender.classes), root / "victim.safetensors")
    return root, splits


def steal(root, *args):
    return runner.invoke(app, ["steal", "--victim", str(root / "victim.safetensors"),
                               "--data", str(root / "bars_train.npz"), *args])


def test_steal_writes_a_suspect_with_its_lineage(workspace):
    root, splits = workspace
    result = steal(root, "--attack", "copy>ftll:epochs=1", "--out", str(root / "s1"))
    assert result.exit_code == 0, result.output
    assert "fidelity" in result.output and "victim queries" in result.output and "test accuracy" in result.output
    suspect, card = load_model(root / "s1")
    lineage = card.lineage
    assert [s["attack"] for s in lineage["stages"]] == ["copy", "ftll"]
    assert lineage["stages"][1]["data"] == splits.attacker.name  # the attacker part, not the defender's
    victim, _ = load_model(root / "victim.safetensors")
    assert lineage["fidelity"] == round(agreement(suspect, victim, splits.test), 4) > 0.8
    assert card.training["dataset"] == splits.attacker.name


def test_steal_counts_queries_of_a_label_only_attack(workspace):
    root, splits = workspace
    result = steal(root, "--attack", "transfer:source_limit=300,pretrain_epochs=1,epochs=1",
                   "--attacker-limit", "200", "--test-limit", "100", "--out", str(root / "s2"))
    assert result.exit_code == 0, result.output
    _, card = load_model(root / "s2")
    assert card.lineage["queries"] == 200 and card.lineage["stages"][0]["oracle"] == "label-only"


def test_steal_never_overwrites_silently(workspace):
    root, _ = workspace
    assert steal(root, "--attack", "copy", "--out", str(root / "s3")).exit_code == 0
    again = steal(root, "--attack", "copy", "--out", str(root / "s3"))
    assert again.exit_code == 2 and "refusing to overwrite" in again.output and "--force" in again.output
    assert steal(root, "--attack", "copy", "--out", str(root / "s3"), "--force").exit_code == 0


@pytest.mark.parametrize("args,message", [
    (["--attack", "nope", "--out", "x"], "unknown attack 'nope'"),
    (["--attack", "ftal:epochs=0", "--out", "x"], "epochs must be"),
    (["--attack", "distill", "--out", "x", "--budget", "10"], "query budget"),
    (["--out", "x"], "needs --attack"),
])
def test_steal_errors_are_one_line(workspace, args, message, monkeypatch, tmp_path):
    root, _ = workspace
    monkeypatch.chdir(tmp_path)
    result = steal(root, *args)
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x.safetensors").exists()


def test_steal_list_shows_every_attack_and_its_parameters():
    result = runner.invoke(app, ["steal", "--list"])
    assert result.exit_code == 0, result.output
    for spec in ATTACKS.values():
        assert f"{spec.name} ({spec.family}, {spec.oracle} oracle)" in result.output
    assert "T=<float>  (default 4.0)" in result.output and "rate=<float>  (default 0.8)" in result.output
