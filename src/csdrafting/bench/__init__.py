"""Benchmark helpers: evaluation prompt sets and their calibration/evaluation splits."""
