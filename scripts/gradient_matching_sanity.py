"""Sanity measurement of the gradient-matching watermark on Fashion-MNIST: scripts/badnets_sanity.py
with --method gradient-matching (same scale, suspects and table; see its docstring)."""

from __future__ import annotations

from badnets_sanity import main  # scripts/ is on sys.path when this file runs as a script

if __name__ == "__main__":
    raise SystemExit(main("gradient-matching"))
