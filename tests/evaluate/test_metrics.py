"""Metrics on hand-computed cases: ECE, AUROC (with ties), FPR@95, MSP/energy detection."""

from __future__ import annotations

import numpy as np
import pytest

from robustsweep.evaluate import metrics
from robustsweep.evaluate.anomaly import detection_metrics, energy_score, msp_score


def test_ece_hand_computed() -> None:
    # 3 classes, 2 bins [0, .5], (.5, 1]
    probs = np.array([[0.1, 0.8, 0.1],   # conf .8, label 1: correct  -> bin 1
                      [0.6, 0.3, 0.1],   # conf .6, label 1: wrong    -> bin 1
                      [0.9, 0.05, 0.05],  # conf .9, label 0: correct  -> bin 1
                      [0.3, 0.4, 0.3]])  # conf .4, label 0: wrong    -> bin 0
    labels = np.array([1, 1, 0, 0])
    # bin 1: mean conf (.8+.6+.9)/3 = .7667, acc 2/3 -> gap .1 ; bin 0: conf .4, acc 0 -> gap .4
    expected = 3 / 4 * abs(2 / 3 - 2.3 / 3) + 1 / 4 * 0.4
    assert expected == pytest.approx(0.175)
    assert metrics.expected_calibration_error(probs, labels, n_bins=2) == pytest.approx(0.175)


def test_ece_perfectly_calibrated_is_zero() -> None:
    probs = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert metrics.expected_calibration_error(probs, np.array([0, 1]), 10) == 0.0


def test_auroc_hand_computed_with_ties() -> None:
    pos, neg = np.array([0.9, 0.8, 0.4]), np.array([0.5, 0.4, 0.1])
    # 9 pairs: .9 beats 3, .8 beats 3, .4 beats .1, ties .4 (1/2), loses to .5 -> 7.5 / 9
    assert metrics.auroc(pos, neg) == pytest.approx(7.5 / 9)
    assert metrics.auroc(neg, pos) == pytest.approx(1.5 / 9)


def test_auroc_extremes() -> None:
    assert metrics.auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
    assert metrics.auroc(np.array([0.0]), np.array([1.0])) == 0.0
    assert metrics.auroc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5


def test_fpr_at_95_tpr_hand_computed() -> None:
    pos = np.arange(1, 21, dtype=float)  # threshold keeping 19 of 20 positives (95 %) is 2
    neg = np.array([0.5, 1.5, 2.0, 3.0, 25.0])  # 2, 3 and 25 pass the threshold
    assert metrics.fpr_at_tpr(pos, neg, 0.95) == pytest.approx(3 / 5)


def test_msp_and_energy_scores() -> None:
    logits = np.array([[0.0, 0.0], [np.log(3.0), 0.0]])
    assert msp_score(logits) == pytest.approx([0.5, 0.75])
    assert energy_score(logits) == pytest.approx([np.log(2.0), np.log(4.0)])


def test_detection_metrics_names_and_values() -> None:
    # in-distribution: confident; OOD: uniform -> both scores separate perfectly
    id_logits = np.array([[5.0, 0.0], [0.0, 6.0], [4.0, 0.0]])
    ood_logits = np.array([[0.1, 0.0], [0.0, 0.2]])
    out = detection_metrics(id_logits, ood_logits, "news")
    assert out == {"anomaly_auroc/news": 1.0, "anomaly_fpr95/news": 0.0,
                   "anomaly_auroc_energy/news": 1.0, "anomaly_fpr95_energy/news": 0.0}


def test_msp_and_energy_can_disagree() -> None:
    # equal large logits: MSP 0.5 (looks OOD) but high energy (looks in-distribution)
    out = detection_metrics(np.array([[10.0, 10.0]]), np.array([[1.0, 0.0]]), "x")
    assert out["anomaly_auroc/x"] == 0.0
    assert out["anomaly_auroc_energy/x"] == 1.0


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [  # golden values (statsmodels proportion_confint(method="wilson"), 95 %)
        (0, 24, 0.0, 0.13797620467498026),
        (6, 24, 0.11999366228595007, 0.4489944400515401),
        (12, 24, 0.3142742581957335, 0.6857257418042665),
        (24, 24, 0.8620237953250198, 1.0),
        (35, 100, 0.26364248243097527, 0.44745556703112027),
    ],
)
def test_wilson_interval_golden_values(k: int, n: int, low: float, high: float) -> None:
    assert metrics.wilson_interval(k, n) == pytest.approx((low, high), abs=1e-12)


def test_wilson_interval_edges() -> None:
    assert all(np.isnan(metrics.wilson_interval(0, 0)))
    low, high = metrics.wilson_interval(1, 1)
    assert high == 1.0 and 0 < low < 1
    # wider for fewer examples, narrower at a stricter level
    assert metrics.wilson_interval(6, 24)[0] < metrics.wilson_interval(60, 240)[0]
    assert metrics.wilson_interval(6, 24, z=1.0)[1] < metrics.wilson_interval(6, 24)[1]
