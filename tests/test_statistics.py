"""The statistics module: torchmetrics' binning (edges included), the debiased ECE, Wilson and BCa
intervals, reliability bins and slices — known answers, and the references they must agree with."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error

from alignx_demo.analysis import statistics as S


def torchmetrics_ece(confidence, outcome) -> float:
    """torchmetrics' top-label L1 ECE of confidences and 0/1 outcomes, in float64."""
    return float(binary_calibration_error(torch.tensor(confidence, dtype=torch.float64),
                                          torch.tensor(outcome, dtype=torch.long), n_bins=S.N_BINS, norm="l1"))


def test_the_two_binnings_of_the_issue_now_agree_with_torchmetrics():
    """0.2 sits on an edge: torchmetrics puts it in [0.2, 0.267) with 0.25 (ECE 0.275); the old
    (lo, hi] binning of analysis.failures put it alone in (0.133, 0.2] (ECE 0.475)."""
    conf, outcome = [0.2, 0.25], [0, 1]
    assert torchmetrics_ece(conf, outcome) == pytest.approx(0.275)
    assert S.ece(conf, outcome) == pytest.approx(0.275, abs=1e-12)


def test_ece_equals_torchmetrics_with_values_on_every_edge():
    rng = np.random.default_rng(0)
    edges = S.bin_edges()
    conf = np.concatenate([edges, edges, np.nextafter(edges, 2.0)[:-1], np.nextafter(edges, -1.0)[1:], [1.0, 1.0, 0.0],
                           rng.uniform(0, 1, 300)])
    outcome = rng.integers(0, 2, len(conf))
    assert S.ece(conf, outcome) == pytest.approx(torchmetrics_ece(conf, outcome), abs=1e-12)
    # top-label, as the routing metrics use it: max probability vs argmax == label
    probs = torch.softmax(torch.randn(400, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2, -1)
    probs[:20] = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)  # top-1 routing: confidence exactly 1
    labels = torch.randint(0, 3, (400,), generator=torch.Generator().manual_seed(2))
    top, pred = probs.max(-1)
    want = float(multiclass_calibration_error(probs, labels, num_classes=3, n_bins=S.N_BINS, norm="l1"))
    assert S.ece(top.numpy(), (pred == labels).numpy()) == pytest.approx(want, abs=1e-6)  # torchmetrics sums in float32 here


def test_bins_are_left_closed_and_one_has_its_own_bin():
    edges = S.bin_edges()
    assert list(S.bin_index([0.0, edges[3], 0.25, np.nextafter(edges[3], 0.0), 0.9999, 1.0])) == [0, 3, 3, 2, 14, 15]


def test_reliability_bins_are_the_ece_bins():
    rng = np.random.default_rng(3)
    conf = np.concatenate([rng.uniform(0.3, 1.0, 200), [1.0] * 7, [0.2, 0.4]])
    outcome = (rng.uniform(size=len(conf)) < conf).astype(int)
    bins = S.reliability_bins(conf, outcome)
    assert len(bins) == S.N_BINS + 1 and sum(b["count"] for b in bins) == len(conf)
    assert bins[-1] == {"bin_lower": 1.0, "bin_upper": 1.0, "count": 7, "confidence": 1.0,
                        "accuracy": round(float(outcome[-9:-2].mean()), 6)}
    assert next(b for b in bins if b["bin_lower"] == pytest.approx(0.2))["count"] >= 1  # 0.2 opens its bin
    rebuilt = sum(b["count"] / len(conf) * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"])
    assert rebuilt == pytest.approx(S.ece(conf, outcome), abs=1e-5)


def test_proportion_intervals_are_never_empty_at_zero_or_one():
    """A percentile bootstrap gives [1, 1] for 10/10; Wilson gives [0.722, 1]."""
    low, high = S.wilson_interval(10, 10)
    assert high == 1.0 and low == pytest.approx(0.722467, abs=1e-6)
    low, high = S.wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.277533, abs=1e-6)
    z = 1.959963984540054  # Wilson's formula, by hand, for 3/10
    p, n = 0.3, 10
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert S.wilson_interval(3, 10) == pytest.approx([centre - half, centre + half], abs=1e-6)
    assert S.wilson_interval(0, 0) is None
    for values in ([1.0] * 10, [0.0] * 10):
        r = S.rate(values)
        assert r["ci_method"] == "wilson" and r["ci95"][0] < r["ci95"][1]
        assert r["ci95"][0] <= r["value"] <= r["ci95"][1]
    summary = S.calibration_summary([0.9] * 10, [True] * 10)
    assert summary["accuracy_ci95"][1] == 1.0 and summary["accuracy_ci95"][0] < 1.0


def test_non_binary_means_get_a_bca_bootstrap_interval():
    values = list(np.random.default_rng(4).uniform(0, 1, 40))
    r = S.rate(values)
    assert r["ci_method"] == "BCa" and r["ci95"][0] < r["value"] < r["ci95"][1]
    assert S.rate([]) == {"value": None, "ci95": None, "ci_method": None, "n": 0}


def test_debiased_ece_is_kumars_estimator_with_exact_expectation():
    """Kumar et al.'s normal_debiased_ce (Monte Carlo over per-bin normal draws) converges to ours."""
    rng = np.random.default_rng(5)
    conf = rng.uniform(0.35, 1.0, 120)
    outcome = (rng.uniform(size=120) < conf ** 1.5).astype(float)
    count, conf_sum, out_sum = S.binned(conf, outcome)
    full = count > 0
    n_b, acc, mean_conf = count[full], out_sum[full] / count[full], conf_sum[full] / count[full]
    plugin = float((n_b / n_b.sum() * np.abs(acc - mean_conf)).sum())
    assert plugin == pytest.approx(S.ece(conf, outcome), abs=1e-12)
    draws = rng.normal(acc, np.sqrt(acc * (1 - acc) / n_b), size=(200_000, len(acc)))
    resampled = (n_b / n_b.sum() * np.abs(draws - mean_conf)).sum(-1).mean()
    assert S.ece_debiased(conf, outcome) == pytest.approx(2 * plugin - resampled, abs=5e-4)
    assert S.expected_abs_normal(np.array([-0.3, 0.0, 0.2]), np.array([0.0, 1.0, 0.0])) == pytest.approx([0.3, math.sqrt(2 / math.pi), 0.2])


def test_debiased_ece_removes_part_of_the_noise_bias_on_calibrated_data():
    """Outcomes drawn with probability = confidence: every bin's true gap is 0, the plug-in ECE is noise
    alone (E|g| = s·√(2/π)), and Kumar's correction leaves (2 − √2) of it (E|g + s·Z'| = √2·s·√(2/π))."""
    rng = np.random.default_rng(6)
    conf = rng.uniform(0.34, 1.0, (400, 150))
    outcome = (rng.uniform(size=conf.shape) < conf).astype(float)
    plugin, debiased = S.ece(conf, outcome).mean(), S.ece_debiased(conf, outcome).mean()
    assert plugin > 0.05 and debiased / plugin == pytest.approx(2 - math.sqrt(2), abs=0.05)
    overconfident = (rng.uniform(size=conf.shape) < conf - 0.1).astype(float)  # a true ECE of 0.1
    plugin, debiased = S.ece(conf, overconfident).mean(), S.ece_debiased(conf, overconfident).mean()
    assert abs(debiased - 0.1) < abs(plugin - 0.1) / 3


def test_ece_intervals_are_bca_and_hold_the_estimate():
    rng = np.random.default_rng(7)
    for n in (30, 150):
        conf = rng.uniform(0.4, 1.0, n)
        s = S.calibration_summary(conf, rng.uniform(size=n) < conf)
        assert s["ci_methods"] == {"accuracy": "wilson", "ece": "BCa", "ece_debiased": "BCa"}
        for name in ("accuracy", "ece", "ece_debiased"):
            assert s[f"{name}_ci95"][0] <= s[name] <= s[f"{name}_ci95"][1], (n, name, s)
    same = S.calibration_summary([1.0] * 5, [1] * 5)  # every replicate equal: BCa undefined
    assert same["ece_ci95"] == [0.0, 0.0] and same["ci_methods"]["ece"] == "percentile"
    assert S.calibration_summary([0.7], [1])["ece_ci95"] is None
    assert S.calibration_summary([], [])["n"] == 0


def test_slices_and_cross_slices_of_any_two_columns():
    axis = ["helpful", "helpful", "honest", "honest", "honest", None]
    source = ["a", "b", "a", "a", "", "a"]
    conf = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    correct = [1, 0, 1, 1, 0, 1]
    table = S.slice_table(axis, conf, correct, intervals=False)
    assert {k: (v["n"], v["correct"]) for k, v in table.items()} == {"helpful": (2, 1), "honest": (3, 2)}
    cross = S.cross_table(axis, source, conf, correct, intervals=False)
    assert {a: {b: s["n"] for b, s in v.items()} for a, v in cross.items()} == {"helpful": {"a": 1, "b": 1}, "honest": {"a": 2}}
    assert cross["honest"]["a"]["accuracy"] == 1.0 and cross["honest"]["a"]["ece"] == pytest.approx(0.35)
