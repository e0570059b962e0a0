"""Sweeps: Ray Tune + Optuna over method knobs."""
