"""`make demo`'s script, end to end on the tiny bars task (the real run uses Fashion-MNIST)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def test_demo_script_runs_and_reuses_its_work(tmp_path, bars_task):
    defender, attacker, test = bars_task
    train_images = np.concatenate([defender.images.numpy(), attacker.images.numpy()])
    train_labels = np.concatenate([defender.labels.numpy(), attacker.labels.numpy()])
    np.savez(tmp_path / "bars_train.npz", x=train_images, y=train_labels)
    np.savez(tmp_path / "bars_test.npz", x=test.images.numpy(), y=test.labels.numpy())
    command = [sys.executable, str(ROOT / "scripts" / "demo.py"), "--data", str(tmp_path / "bars_train.npz"),
               "--out", str(tmp_path / "demo"), "--epochs", "10", "--m", "8", "--m-black-box", "15",
               "--seeds", "2", "--defender-limit", "0", "--attacker-limit", "0", "--panel-size", "4", "--panel-archs", "lenet5", "--panel-epochs", "4",
               "--set", "arch=lenet5", "--set", "meta_samples=60", "--set", "benign_models=2"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=1800)  # a hang guard, not a timing
    assert first.returncode == 0, first.stderr[-2000:]
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    verdicts = {(v["suspect"], v["setting"]): v for v in summary["verdicts"]}
    models = ("direct-copy", "fine-tuned", "independent", "independent-adam", "untrained")
    assert set(verdicts) == {(s, a) for s in models for a in ("white-box", "black-box")} | {("constant-api", "black-box")}
    for key, verdict in verdicts.items():  # the null-panel rule never accuses what cannot have been stolen
        if key[0] not in ("direct-copy", "fine-tuned"):
            assert verdict["outcome"] != "stolen", key
    for key in (("untrained", "white-box"), ("untrained", "black-box"), ("constant-api", "black-box")):
        assert verdicts[key]["outcome"] == "inconclusive" and verdicts[key]["competence"]["competent"] is False
    # A copy is never cleared; on this tiny task a 4-model panel may lack the power to accuse it
    # (inconclusive, saying so), while the paper's test on the same measurement accuses it.
    assert verdicts["direct-copy", "white-box"]["outcome"] in ("stolen", "inconclusive")
    assert verdicts["direct-copy", "white-box"]["reason"]
    # both rules, one measurement (on this tiny task the white-box C is too weak for either: black-box here)
    assert summary["paper_rule"]["direct-copy|black-box"]["outcome"] == "stolen"
    assert all(not any(r == "panel" for r in rules) for rules in summary["independent_accusations"].values())
    assert (tmp_path / "demo" / "suspects" / "direct-copy.onnx").is_file()
    assert (tmp_path / "demo" / "panels").is_dir()
    # the ONNX export gives the same black-box evidence as the model file
    onnx = json.loads((tmp_path / "demo" / "verdicts" / "direct-copy.black-box-ONNX.json").read_text())
    model_file = json.loads((tmp_path / "demo" / "verdicts" / "direct-copy.black-box.json").read_text())
    assert onnx["outcome"] == model_file["outcome"]
    if model_file["statistic"] is not None:
        assert abs(onnx["statistic"] - model_file["statistic"]) < 1e-4
    text = (tmp_path / "demo" / "summary.md").read_text()
    assert "| direct-copy |" in text and "| constant-api |" in text and "of 2 |" in text
    report = (tmp_path / "demo" / "report.html").read_text()  # make demo's page: every verdict, one evidence block
    assert report.count("<section") == 16 and "suspect model “direct-copy”" in report
    assert report.count("Transformed images beside their originals.</strong>") == 1
    second = subprocess.run(command, capture_output=True, text=True, timeout=1800)  # a hang guard, not a timing
    assert second.returncode == 0, second.stderr[-2000:]
    assert "reusing the protection" in second.stderr and "reusing suspect" in second.stderr
    again = {(v["suspect"], v["setting"]): v
             for v in json.loads((tmp_path / "demo" / "summary.json").read_text())["verdicts"]}
    assert all(again[name]["p_value"] == verdicts[name]["p_value"] for name in verdicts)
