"""benchmarks/gpu_check.py runs on CPU with Ray and MLflow unimportable and writes its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# ray and mlflow made unimportable (None in sys.modules): the GPU machine has neither.
BLOCKED = """
import runpy, sys
sys.modules["ray"] = None
sys.modules["mlflow"] = None
try:
    import ray  # the block itself must work
except ImportError:
    print("ray refused", file=sys.stderr)
sys.argv = ["gpu_check.py", *sys.argv[1:]]
runpy.run_path(sys.argv_script, run_name="__main__")
""".replace("sys.argv_script", repr(str(ROOT / "benchmarks" / "gpu_check.py")))


def test_gpu_check_on_cpu_without_ray_or_mlflow(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKED, "--device", "cpu", "--methods", "vanilla", "pgd",
         "--steps", "2", "--batch-size", "2", "--train-rows", "16", "--eval-rows", "4",
         "--attack-examples", "0", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0 and "ray refused" in proc.stderr, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["device"] == "cpu"
    rows = {(r["method"], r["precision"]): r for r in report["train"]}
    assert set(rows) == {("vanilla", "fp32"), ("vanilla", "bf16"), ("pgd", "fp32"), ("pgd", "bf16")}
    for method in ("vanilla", "pgd"):
        fp32 = rows[(method, "fp32")]
        assert fp32["status"] == "ok", fp32
        assert fp32["steps"] == 2 and fp32["step_time_s"] > 0 and fp32["peak_memory_bytes"] > 0
        assert fp32["inference_passes_per_query"] == 1.0
        assert fp32["train_precision"] == "fp32"
        bf16 = rows[(method, "bf16")]  # really trained in bf16 (train.precision), not skipped
        assert bf16["status"] == "ok", bf16
        assert bf16["train_precision"] == "bf16"
        assert bf16["steps"] == 2 and bf16["step_time_s"] > 0 and bf16["peak_memory_bytes"] > 0
        assert bf16["inference_passes_per_query"] == 1.0
    assert report["attack"] == {"status": "skipped", "reason": "--attack-examples 0"}
    assert "train_precision_available" not in report


def test_gpu_check_job_sets_train_precision() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_check import job

    for precision in ("fp32", "bf16"):
        cfg = job("vanilla", steps=2, batch_size=2, train_rows=8, eval_rows=4, precision=precision)
        assert cfg.train.precision == precision and cfg.train.max_steps_per_epoch == 2
