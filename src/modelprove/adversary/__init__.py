"""Adaptive adversaries against ownership methods: evasion detectors, and later STRIP, trigger
synthesis, saliency and fraudulent-claim attempts (DESIGN.md). Imports from every layer above it."""
