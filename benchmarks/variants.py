"""The ``method:knob=value,...`` variant syntax shared by the benchmark scripts."""

from __future__ import annotations

import yaml


def parse_variant(text: str) -> tuple[str, dict[str, object]]:
    """``rift:w_kl=0,ascc_steps=2`` -> ("rift", {"w_kl": 0, "ascc_steps": 2}) (YAML scalars)."""
    name, _, spec = text.partition(":")
    knobs = {}
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        knobs[key.strip()] = yaml.safe_load(value)
    return name, knobs
