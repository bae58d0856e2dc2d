"""Sanity measurement of Dataset Inference ("dataset-inference") on Fashion-MNIST at reduced scale.

defender 10k / attacker 10k / test 2k, 5 epochs, 1 thread: victim vs plain-model accuracy and the
verdicts on the victim, a direct copy, a fine-tuned copy and an independent model (see
scripts/_baseline_sanity.py). Usage:
    PYTHONPATH=src python scripts/entangled_sanity.py [--threads 1] [--set mingd_steps=30]
"""

import sys

from _baseline_sanity import main

if __name__ == "__main__":
    sys.exit(main("dataset-inference", __doc__))
