"""The README's picture of a report (docs/report-screenshot.png), from a real tiny verdict.

Runs the README's commands on a small slice of Fashion-MNIST: protect with MOVE, steal the victim by
fine-tuning it on the attacker's half, verify the suspect white-box with ``--report``, then photographs
the report in headless Chromium (Debian's ``chromium``). A few minutes on 2 cores, most of it training
the victim, its benign models and the null panel; a second run reuses the protection and the suspect.

    .venv/bin/python scripts/report_screenshot.py            # writes docs/report-screenshot.png
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from modelprove.report.browser import screenshot

ROOT = Path(__file__).resolve().parents[1]


def modelprove(*args: str) -> None:
    command = [sys.executable, "-m", "modelprove", *args]
    print("$ modelprove " + " ".join(args), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)  # relative paths: the report shows what a user types


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("runs/report-screenshot"), help="relative to the repository")
    parser.add_argument("--out", type=Path, default=Path("docs/report-screenshot.png"), help="relative to the repository")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--defender-limit", type=int, default=3000)
    parser.add_argument("--attacker-limit", type=int, default=2000)
    parser.add_argument("--test-limit", type=int, default=1000)
    args = parser.parse_args()
    work = args.work
    protection, suspect, report = work / "protection", work / "fine-tuned.safetensors", work / "report.html"
    common = ["--data", args.data, "--test-limit", str(args.test_limit)]
    if not (protection / "manifest.json").is_file():
        # A null panel of the victim's architecture only (8 honest cnn_small models, 3 epochs) keeps the
        # picture's run short; the suspect is a cnn_small, so its panel is the one it is judged by.
        modelprove("protect", "--method", "move", *common, "--defender-limit", str(args.defender_limit),
                   "--set", "epochs=4", "--panel-size", "8", "--panel-archs", "cnn_small", "--panel-epochs", "3",
                   "--panel-store", str(work / "panels"), "--out", str(protection))
    if not suspect.is_file():
        modelprove("steal", "--victim", str(protection / "victim.safetensors"), "--attack", "finetune:epochs=2",
                   *common, "--attacker-limit", str(args.attacker_limit), "--out", str(suspect))
    modelprove("verify", "--protection", str(protection), "--suspect", str(suspect), "--access", "white-box",
               "--json", str(work / "verdict.json"), "--report", str(report), "--force")
    screenshot(ROOT / report, ROOT / args.out, width=1100, height=2300)
    print(f"screenshot of {report} written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
