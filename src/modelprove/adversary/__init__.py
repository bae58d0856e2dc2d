"""Adaptive adversaries against ownership methods: evasion detectors (query_detector for CAE,
key_detector for key-sample watermarks), and later STRIP, trigger synthesis, saliency and
fraudulent-claim attempts (DESIGN.md). Imports from every layer above it."""
