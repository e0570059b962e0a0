"""Evaluation: metrics, the clean/calibration/shift suite and attacks."""
