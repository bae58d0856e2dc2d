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
               "--set", "arch=lenet5", "--set", "meta_samples=60", "--set", "benign_models=2"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=1800)  # a hang guard, not a timing
    assert first.returncode == 0, first.stderr[-2000:]
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    verdicts = {(v["suspect"], v["setting"]): v for v in summary["verdicts"]}
    assert set(verdicts) == {(s, a) for s in ("direct-copy", "fine-tuned", "independent")
                             for a in ("white-box", "black-box")}
    for setting in ("white-box", "black-box"):
        assert verdicts["direct-copy", setting]["stolen"] and verdicts["direct-copy", setting]["p_value"] < 0.01
    assert verdicts["direct-copy", "black-box"]["queries"] == 15 * 6
    assert (tmp_path / "demo" / "suspects" / "direct-copy.onnx").is_file()
    # the ONNX export gives the same black-box verdict as the model file
    onnx = json.loads((tmp_path / "demo" / "verdicts" / "direct-copy.black-box-ONNX.json").read_text())
    assert abs(onnx["effect"] - verdicts["direct-copy", "black-box"]["effect"]) < 1e-4
    assert "| direct-copy |" in (tmp_path / "demo" / "summary.md").read_text()
    report = (tmp_path / "demo" / "report.html").read_text()  # make demo's page: all 9 verdicts, one evidence block
    assert report.count("<section") == 9 and "suspect model “direct-copy”" in report
    assert report.count("Transformed images beside their originals.</strong>") == 1
    second = subprocess.run(command, capture_output=True, text=True, timeout=1800)  # a hang guard, not a timing
    assert second.returncode == 0, second.stderr[-2000:]
    assert "reusing the protection" in second.stderr and "reusing suspect" in second.stderr
    again = {(v["suspect"], v["setting"]): v
             for v in json.loads((tmp_path / "demo" / "summary.json").read_text())["verdicts"]}
    assert all(again[name]["p_value"] == verdicts[name]["p_value"] for name in verdicts)
