"""Adaptive adversaries against ownership methods: evasion detectors (query_detector for CAE,
key_detector for key-sample watermarks), saliency-based trigger removal with Grad-CAM (saliency) and
STRIP's input filter (strip) for MOVE's Sec. 7.3, and later trigger synthesis and fraudulent-claim
attempts (DESIGN.md). Imports from every layer above it."""
