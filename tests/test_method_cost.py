"""benchmarks/method_cost.py's table: precisions and full vs LoRA side by side (no model runs)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from method_cost import Row, lora_config, table


def rows() -> list[Row]:
    return [
        Row("vanilla", 1.0, step_s={"fp32": 0.10, "bf16": 0.05}, trainable_share=1.0),
        Row("vanilla+lora", 1.0, step_s={"fp32": 0.04, "bf16": 0.02}, trainable_share=0.005,
            peak_bytes={"fp32": 3 * 2 ** 20}),
        Row("pgd", 6.0, step_s={"fp32": 0.30}, trainable_share=1.0, notes=["bf16 skipped: boom"]),
    ]


def test_table_shows_precisions_ratios_and_speed_up() -> None:
    out = table(rows()[::2], ["fp32", "bf16"], markdown=True).splitlines()
    assert out[0] == ("| method | fp32 step s | bf16 step s | x vanilla (fp32) | theory x | "
                      "measured/theory (fp32) | bf16 speed-up | setup s |")
    assert out[2] == "| vanilla | 0.1000 | 0.0500 | 1.00 | 1.00 | 1.00 | 2.00 | 0.0 |"
    assert out[3] == "| pgd | 0.3000 | - | 3.00 | 6.00 | 0.50 | - | 0.0 |"
    assert out[-1] == "- pgd: bf16 skipped: boom"


def test_table_with_lora_compares_to_the_full_and_the_lora_baseline() -> None:
    out = table(rows(), ["fp32", "bf16"], markdown=True, lora=True, cuda=True).splitlines()
    assert out[0].endswith("| bf16 speed-up | trainable % | lora/full (fp32) | fp32 peak MiB "
                           "| bf16 peak MiB | setup s |")
    # x vanilla against vanilla+lora; lora/full against the same method's full fine-tuning
    assert out[3] == "| vanilla+lora | 0.0400 | 0.0200 | 1.00 | 1.00 | 1.00 | 2.00 | 0.50 | 0.40 | 3 | - | 0.0 |"
    assert "| 100.00 | - |" in out[2]
    plain = table(rows(), ["fp32", "bf16"], markdown=False, lora=True)
    assert "trainable %" in plain and "fp32 peak MiB" in plain


def test_lora_config_reads_yaml_scalars_and_validates() -> None:
    cfg = lora_config(["r=16", "alpha=32"])
    assert (cfg.method, cfg.r, cfg.alpha) == ("lora", 16, 32.0)
    with pytest.raises(ValidationError):
        lora_config(["r=0"])
