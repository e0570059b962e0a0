"""What a sweep writes to a log (non-TTY): one line per trial event, no progress bars, no Ray
noise. The unit tests check the filter and the progress decision; the slow one runs a real
2-trial sweep through the CLI with its output going to a file."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from robustsweep.train import ray_trainer

sys.path.insert(0, str(Path(__file__).parent / "integration"))

BAR = re.compile(r"\d+%\|")
NOISE = ("PreemptionWatcher", "Token authentication is", "__ray_tqdm_magic_token__",
         "Failed to query Ray Train Controller")


def test_progress_mode_follows_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ray_trainer.PROGRESS_ENV, raising=False)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    assert ray_trainer.progress_mode() == "lines"
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert ray_trainer.progress_mode() == "bars"
    monkeypatch.setenv(ray_trainer.PROGRESS_ENV, "lines")
    assert ray_trainer.progress_mode() == "lines"


def test_noise_filter_drops_ray_noise_and_bars_only_without_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    preempt = ("[2026-12-02 18:00:00,000 E 123 456] core_worker.cc:2345: Failed to ... actor "
               "PreemptionWatcher ...")
    bar = "epoch 1/2 loss 0.6931:  50%|█████     | 1/2 [00:01<00:01,  1.00s/step]"
    real = "WARNING: attack deepwordbug skipped 3 examples"
    monkeypatch.setenv(ray_trainer.PROGRESS_ENV, "lines")
    assert ray_trainer.is_noise(preempt) and ray_trainer.is_noise(bar)
    assert not ray_trainer.is_noise(real)
    monkeypatch.setenv(ray_trainer.PROGRESS_ENV, "bars")
    assert ray_trainer.is_noise(preempt) and not ray_trainer.is_noise(bar)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_non_tty_sweep_log_has_one_line_per_event_and_no_bars(tmp_path: Path) -> None:
    from sweep_procs import CLI, kill_session, start, tail, tiny_job

    sweep_dir = tmp_path / "sweep"
    job = tiny_job(tmp_path / "job.yaml", sweep_dir, max_concurrent_trials=1)
    log = tmp_path / "sweep.log"
    driver = start([*CLI, "sweep", str(job), "--no-report"], log)
    try:
        assert driver.wait(timeout=840) == 0, tail(log)
    finally:
        kill_session(driver.pid)
    lines = log.read_text(errors="replace").splitlines()
    done = [i for i, line in enumerate(lines) if "✔ done" in line]
    assert len(done) == 2, tail(log)
    after_first_done = lines[done[0]:]
    assert not [ln for ln in after_first_done if BAR.search(ln)], tail(log)
    assert not [ln for ln in lines for n in NOISE if n in ln], tail(log)
    assert sum("▶ start" in ln for ln in lines) == 2
    # 2 trials x (start, 2 epochs, done) plus the sweep's header and closing commands. On a
    # machine where other Ray instances run, Train's PlacementGroupCleaner may print a traceback
    # ("Found multiple active Ray instances"): a real Ray problem, so it is not filtered, but
    # it is not ours to count either.
    ours = [ln for ln in lines if "PlacementGroupCleaner" not in ln]
    assert len(ours) <= 30, f"{len(ours)} lines:\n" + "\n".join(ours)


def test_a_transient_ray_traceback_is_dropped_as_a_block() -> None:
    lines = [
        "epoch 1 ok",
        "Failed to send resource request for train-abc. If this only happens transiently ...",
        "Traceback (most recent call last):",
        '  File "x.py", line 58, in send_resource_request',
        "    ray.get(",
        "ray.exceptions.GetTimeoutError: Get timed out: some object(s) not ready.",
        "  epoch 2 ok (indented, after the block)",
        "Traceback (most recent call last):",
        "ValueError: a real error stays",
    ]
    assert ray_trainer.drop_transient_tracebacks(lines) == [
        "epoch 1 ok",
        "  epoch 2 ok (indented, after the block)",
        "Traceback (most recent call last):",
        "ValueError: a real error stays",
    ]
