"""Robust fine-tuning methods: one module each, found by the registry."""

from robustsweep.methods.base import Batch, Knobs, RobustMethod
from robustsweep.methods.registry import available, build, get, register

__all__ = ["Batch", "Knobs", "RobustMethod", "available", "build", "get", "register"]
