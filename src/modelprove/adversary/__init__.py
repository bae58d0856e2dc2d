"""Adaptive attacks on ownership methods: evasion detectors, fraudulent-claim attempts, and the like."""
