"""The project's one statistics module: calibration error, reliability bins, intervals and slices.

Used by `evaluate` (`evaluation.routing_metrics`, `evaluation.benchmarks`), by `analyze` and by the
page (`analysis.failures`). It lives in `analysis` because that package is the neutral layer all
three already import (it imports nothing from evaluation, training or the UI); it needs only numpy,
scipy and torch (for torchmetrics' exact bin edges).

**Binning** (torchmetrics' `_binning_bucketize`, in float64): edges e_0..e_B = torch.linspace(0, 1,
B + 1) (B = 15 bins); a confidence c falls in bin b when e_b ≤ c < e_{b+1} (left-closed, so a value
on an edge belongs to the bin above it), and c = 1 exactly falls in an extra bin of its own, [1, 1]
(top-1 routing's confidence is always 1). Confidences are clipped to [0, 1] and computed in float64:
torchmetrics bins in its input's dtype, and given float64 it agrees with this module exactly,
including on the edges (tests check it); in float32 the edge e_3 = 0.2 rounds above float32(0.2).
Reliability bins use this binning: B + 1 rows (count, mean confidence, mean outcome).

**ECE** (plug-in, L1): Σ_b (n_b / n)·|ā_b − c̄_b| over non-empty bins, ā_b the bin's mean outcome
(top-label: 1 when the argmax is the label), c̄_b its mean confidence — torchmetrics'
`calibration_error(norm="l1")`. It is biased upward: noise alone makes |ā_b − c̄_b| > 0.

**Debiased ECE** (Kumar, Liang & Ma 2019, "Verified Uncertainty Calibration", §5, the bias-corrected
ℓ1 estimator of their `normal_debiased_ce`): the plug-in ECE minus an estimate of its bias,
    ECE_debiased = Σ_b (n_b / n)·(2·|g_b| − E|g_b + s_b·Z|),   Z ~ N(0, 1),
with g_b = ā_b − c̄_b and s_b² = ā_b(1 − ā_b)/n_b the plug-in sampling variance of the bin's accuracy
(E|g_b + s_b·Z| − |g_b| is the expected excess of a bin gap re-drawn with that noise). Kumar et al.
estimate the expectation with 1,000 normal draws; here it is exact,
    E|μ + σZ| = σ·√(2/π)·exp(−μ²/2σ²) + μ·(1 − 2Φ(−μ/σ))   (= |μ| when σ = 0).
It removes part of the bias, not all: where a bin's true gap is 0 it leaves (2 − √2) ≈ 0.59 of the
plug-in's noise s_b·√(2/π); where the true gap is large against s_b it is close to unbiased (on 150 rows
overconfident by 0.1: plug-in 0.125, debiased 0.098). It can be slightly negative; it is reported as is
(clipping would bias it). Bins whose outcomes are all 0 or all 1 (s_b = 0, e.g. a bin of one row) get no
correction.

**Intervals** (95 %):
- proportions (accuracy, refusal rate, any mean of 0/1 values): Wilson score interval
  (`scipy.stats.binomtest(k, n).proportion_ci(method="wilson")`); 10/10 gives [0.722, 1], never [1, 1];
- anything else (ECE, debiased ECE, means of non-binary values): bootstrap over rows
  (`scipy.stats.bootstrap`, 2,000 resamples, seed 0) with the BCa method, which corrects the bootstrap
  distribution's bias (so an upward-biased ECE's interval is not pushed above its estimate) — where
  BCa is defined; where it is not (a degenerate bootstrap distribution, or more than `BCA_MAX_N` rows,
  where its jackknife costs n² evaluations) the interval is the percentile one and `method` says so.
  None below 2 rows.

**Slices**: the summary of the rows sharing one value of a column (`slice_table`), or one value of each
of two columns (`cross_table`).

**Two systems on the same rows** (paired; e.g. two routers on one prompt set):
- McNemar's exact test of per-row correctness (`mcnemar_exact`): of the discordant rows, b = right by the
  first and wrong by the second, c = the reverse; under "equally accurate" b ~ Binomial(b + c, 1/2), and the
  two-sided exact p-value is `scipy.stats.binomtest(b, b + c).pvalue` (1 when b + c = 0). b = 8, c = 1 gives
  p = 20/512 = 0.0390625;
- the accuracy difference (second − first) with Newcombe's square-and-add interval for paired proportions
  (Newcombe 1998, method 10: the two Wilson intervals combined with the estimated correlation of the
  pair, continuity-corrected) — never [0, 0] on a few rows that all agree (`paired_accuracy_difference`);
- any other statistic's difference (ECE, debiased ECE) with a paired bootstrap: rows resampled with both
  systems' values together, BCa where defined (`paired_difference`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

N_BINS = 15
CONFIDENCE_LEVEL = 0.95
N_RESAMPLES = 2000
SEED = 0
BCA_MAX_N = 2000
"""Above this many rows the bootstrap interval is the percentile one (BCa's jackknife is O(n²))."""
DIGITS = 6

DEFINITIONS = {
    "bins": f"{N_BINS} equal-width confidence bins [lo, hi) from torch.linspace(0, 1, {N_BINS + 1}) (torchmetrics' "
            "binning, float64), plus a bin of its own for confidence exactly 1",
    "ece": "top-label expected calibration error (plug-in, L1): sum over bins of (bin size / n)·|accuracy − mean confidence|",
    "ece_debiased": "ECE minus its estimated bias (Kumar et al. 2019): sum over bins of (n_b/n)·(2|g_b| − E|g_b + s_b·Z|), "
                    "g_b = accuracy − confidence, s_b² = accuracy(1 − accuracy)/n_b, Z standard normal; it removes part of "
                    "the bias (about 40 % of what noise alone gives a calibrated router) and can be < 0",
    "accuracy_ci95": "95 % Wilson score interval",
    "ece_ci95": f"95 % BCa bootstrap interval over rows ({N_RESAMPLES} resamples, seed {SEED}); percentile where BCa is "
                "undefined (see ci_methods)",
}
PAIRED_DEFINITIONS = {
    "mcnemar": "McNemar's exact test of per-row correctness: b = rows right by A and wrong by B, c = the reverse; "
               "two-sided exact binomial p-value of b among the b + c discordant rows at 1/2 (1 when there are none)",
    "accuracy_difference": "accuracy(B) − accuracy(A) on the same rows, with Newcombe's square-and-add 95 % interval for "
                           "paired proportions (1998, method 10)",
    "ece_difference": f"ECE(B) − ECE(A) on the same rows, with a paired bootstrap 95 % interval (rows resampled with both "
                      f"models' values together; {N_RESAMPLES} resamples, seed {SEED}; BCa where defined, else percentile)",
}


# binning -----------------------------------------------------------------------------------------------

def bin_edges(n_bins: int = N_BINS) -> np.ndarray:
    """The B + 1 edges torchmetrics uses (torch.linspace in float64; numpy's linspace differs by an ulp)."""
    import torch

    return torch.linspace(0, 1, n_bins + 1, dtype=torch.float64).numpy()


def bin_index(confidence: Any, n_bins: int = N_BINS) -> np.ndarray:
    """Each confidence's bin: b with e_b ≤ c < e_{b+1}; B for c = 1 (torch.bucketize(c, edges, right=True) − 1)."""
    conf = np.clip(np.asarray(confidence, dtype=np.float64), 0.0, 1.0)
    return np.searchsorted(bin_edges(n_bins), conf, side="right") - 1


def binned(confidence: Any, outcome: Any, n_bins: int = N_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(count, sum of confidences, sum of outcomes) per bin, shape (…, B + 1), over the last axis of the
    inputs (vectorised over the leading ones, for the bootstrap)."""
    conf = np.clip(np.asarray(confidence, dtype=np.float64), 0.0, 1.0)
    out = np.broadcast_to(np.asarray(outcome, dtype=np.float64), conf.shape)
    lead, n = conf.shape[:-1], conf.shape[-1]
    width = n_bins + 1
    rows = int(np.prod(lead)) if lead else 1
    flat = (bin_index(conf, n_bins).reshape(rows, n) + width * np.arange(rows)[:, None]).ravel()
    size = rows * width
    shape = (*lead, width)
    count = np.bincount(flat, minlength=size).reshape(shape).astype(np.float64)
    conf_sum = np.bincount(flat, weights=conf.reshape(-1), minlength=size).reshape(shape)
    out_sum = np.bincount(flat, weights=out.reshape(-1), minlength=size).reshape(shape)
    return count, conf_sum, out_sum


def _gaps(confidence: Any, outcome: Any, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    count, conf_sum, out_sum = binned(confidence, outcome, n_bins)
    safe = np.maximum(count, 1.0)
    accuracy = out_sum / safe
    gap = accuracy - conf_sum / safe
    weight = count / count.sum(-1, keepdims=True)
    return count, weight, gap, accuracy


def ece(confidence: Any, outcome: Any, n_bins: int = N_BINS) -> Any:
    """Plug-in ECE over the last axis (a float for 1-D input); see the module docstring."""
    _, weight, gap, _ = _gaps(confidence, outcome, n_bins)
    value = (weight * np.abs(gap)).sum(-1)
    return float(value) if np.ndim(value) == 0 else value


def expected_abs_normal(mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """E|μ + σZ| for Z ~ N(0, 1), elementwise (|μ| where σ = 0)."""
    from scipy.special import ndtr

    mu, sigma = np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    positive = sigma > 0
    s = np.where(positive, sigma, 1.0)
    folded = s * math.sqrt(2 / math.pi) * np.exp(-0.5 * (mu / s) ** 2) + mu * (1 - 2 * ndtr(-mu / s))
    return np.where(positive, folded, np.abs(mu))


def ece_debiased(confidence: Any, outcome: Any, n_bins: int = N_BINS) -> Any:
    """Debiased ECE over the last axis (a float for 1-D input); see the module docstring."""
    count, weight, gap, accuracy = _gaps(confidence, outcome, n_bins)
    sigma = np.sqrt(np.clip(accuracy * (1 - accuracy), 0.0, None) / np.maximum(count, 1.0))
    value = (weight * (2 * np.abs(gap) - expected_abs_normal(gap, sigma))).sum(-1)
    return float(value) if np.ndim(value) == 0 else value


def reliability_bins(confidence: Any, outcome: Any, n_bins: int = N_BINS) -> list[dict[str, Any]]:
    """The ECE's bins, B + 1 rows: {"bin_lower", "bin_upper", "count", "confidence", "accuracy"}
    (mean confidence and mean outcome, None in an empty bin; the last row is confidence exactly 1)."""
    count, conf_sum, out_sum = binned(np.asarray(confidence, dtype=np.float64).reshape(-1),
                                      np.asarray(outcome, dtype=np.float64).reshape(-1), n_bins)
    edges = bin_edges(n_bins)
    rows = []
    for b in range(n_bins + 1):
        n = int(count[b])
        rows.append({"bin_lower": float(edges[min(b, n_bins)]), "bin_upper": float(edges[min(b + 1, n_bins)]), "count": n,
                     "confidence": _round(conf_sum[b] / n) if n else None, "accuracy": _round(out_sum[b] / n) if n else None})
    return rows


# intervals ---------------------------------------------------------------------------------------------

def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), DIGITS)


def wilson_interval(successes: int, n: int, confidence_level: float = CONFIDENCE_LEVEL) -> list[float] | None:
    """Wilson score interval of a proportion successes/n (None for n = 0); exactly 0 / 1 at 0/n and n/n."""
    if n <= 0:
        return None
    from scipy.stats import binomtest

    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence_level, method="wilson")
    low = 0.0 if successes == 0 else float(ci.low)
    high = 1.0 if successes == n else float(ci.high)
    return [_round(low), _round(high)]


def bootstrap_interval(statistic: Callable[..., Any], *samples: Sequence[float], paired: bool = True,
                       n_resamples: int = N_RESAMPLES) -> tuple[list[float] | None, str | None]:
    """(95 % interval, method) of a statistic of (paired) samples over rows: BCa where defined, else
    percentile (see the module docstring); (None, None) below 2 rows. `statistic(*samples, axis=-1)`
    must be vectorised over leading axes."""
    arrays = tuple(np.asarray(s, dtype=np.float64) for s in samples)
    n = len(arrays[0])
    if n < 2:
        return None, None
    from scipy.stats import bootstrap

    methods = ("BCa", "percentile") if n <= BCA_MAX_N else ("percentile",)
    for method in methods:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = bootstrap(arrays, statistic, paired=paired, vectorized=True, n_resamples=n_resamples,
                               confidence_level=CONFIDENCE_LEVEL, method=method, rng=np.random.default_rng(SEED))
        low, high = (float(v) for v in result.confidence_interval)
        if math.isfinite(low) and math.isfinite(high):
            return [_round(low), _round(high)], method
    # every replicate equal and the percentile undefined too: the statistic itself
    value = float(statistic(*arrays, axis=-1))
    return [_round(value), _round(value)], "percentile"


def ece_statistic(estimator: Callable[..., Any], n_bins: int = N_BINS) -> Callable[..., np.ndarray]:
    """`estimator` (`ece` or `ece_debiased`) as a `scipy.stats.bootstrap` statistic of (confidence, outcome)."""
    def statistic(confidence: np.ndarray, outcome: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.asarray(estimator(np.moveaxis(confidence, axis, -1), np.moveaxis(outcome, axis, -1), n_bins))

    return statistic


def mean_statistic(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """The mean, as a `bootstrap_interval` statistic."""
    return np.mean(values, axis=axis)


def is_binary(values: Sequence[float]) -> bool:
    return bool(np.isin(np.asarray(values, dtype=np.float64), (0.0, 1.0)).all())


def mean_interval(values: Sequence[float]) -> tuple[list[float] | None, str | None]:
    """(95 % interval, method) of a mean: Wilson for 0/1 values, bootstrap (BCa) otherwise."""
    data = np.asarray(values, dtype=np.float64)
    if len(data) and is_binary(data):
        return wilson_interval(int(data.sum()), len(data)), "wilson"
    return bootstrap_interval(mean_statistic, data)


def rate(values: Sequence[float]) -> dict[str, Any]:
    """{"value": mean or None, "ci95", "ci_method", "n"} of per-item values (0/1 or in [0, 1])."""
    ci, method = mean_interval(values) if len(values) else (None, None)
    return {"value": float(np.mean(values)) if len(values) else None, "ci95": ci, "ci_method": method, "n": len(values)}


# a set of rows ------------------------------------------------------------------------------------------

def calibration_summary(confidence: Sequence[float], correct: Sequence[bool], *, intervals: bool = True,
                        n_bins: int = N_BINS) -> dict[str, Any]:
    """n, correct, accuracy, ECE, debiased ECE (each with its 95 % interval and its method in
    "ci_methods") and mean confidence of some rows; empty rows give n = 0 and None elsewhere."""
    conf = np.asarray(confidence, dtype=np.float64)
    corr = np.asarray(correct, dtype=np.float64)
    n = len(conf)
    if n == 0:
        return {"n": 0, "correct": 0, "accuracy": None, "accuracy_ci95": None, "ece": None, "ece_ci95": None,
                "ece_debiased": None, "ece_debiased_ci95": None, "mean_confidence": None, "ci_methods": {}}
    out = {"n": n, "correct": int(corr.sum()), "accuracy": _round(corr.mean()), "accuracy_ci95": None,
           "ece": _round(ece(conf, corr, n_bins)), "ece_ci95": None,
           "ece_debiased": _round(ece_debiased(conf, corr, n_bins)), "ece_debiased_ci95": None,
           "mean_confidence": _round(conf.mean()), "ci_methods": {}}
    if intervals:
        out["accuracy_ci95"] = wilson_interval(int(corr.sum()), n)
        out["ci_methods"]["accuracy"] = "wilson"
        for name, estimator in (("ece", ece), ("ece_debiased", ece_debiased)):
            out[f"{name}_ci95"], method = bootstrap_interval(ece_statistic(estimator, n_bins), conf, corr)
            if method:
                out["ci_methods"][name] = method
    return out


def slice_table(values: Sequence[Hashable], confidence: Sequence[float], correct: Sequence[bool],
                **kwargs: Any) -> dict[str, dict[str, Any]]:
    """{value: calibration_summary of the rows with that value}, values sorted (None / "" left out)."""
    conf, corr = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    keys = [None if v in (None, "") else str(v) for v in values]
    out = {}
    for value in sorted({k for k in keys if k is not None}):
        pick = np.array([k == value for k in keys])
        out[value] = calibration_summary(conf[pick], corr[pick], **kwargs)
    return out


def cross_table(first: Sequence[Hashable], second: Sequence[Hashable], confidence: Sequence[float],
                correct: Sequence[bool], **kwargs: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """{value of first: {value of second: calibration_summary}} over the combinations that occur."""
    conf, corr = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    a = [None if v in (None, "") else str(v) for v in first]
    b = [None if v in (None, "") else str(v) for v in second]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for va in sorted({v for v in a if v is not None}):
        for vb in sorted({w for v, w in zip(a, b) if v == va and w is not None}):
            pick = np.array([x == va and y == vb for x, y in zip(a, b)])
            out.setdefault(va, {})[vb] = calibration_summary(conf[pick], corr[pick], **kwargs)
    return out


# two systems on the same rows ----------------------------------------------------------------------------

def _paired_outcomes(first: Sequence[bool], second: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(first, dtype=bool), np.asarray(second, dtype=bool)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired outcomes need two equally long lists, got {x.shape} and {y.shape}")
    return x, y


def mcnemar_exact(first: Sequence[bool], second: Sequence[bool]) -> dict[str, Any]:
    """McNemar's exact test of paired 0/1 outcomes (see the module docstring): {"n", "b" (first right,
    second wrong), "c" (first wrong, second right), "discordant", "p_value" (two-sided, exact), "method"}."""
    x, y = _paired_outcomes(first, second)
    b, c = int((x & ~y).sum()), int((~x & y).sum())
    if b + c:
        from scipy.stats import binomtest

        p = float(binomtest(b, b + c, 0.5).pvalue)
    else:
        p = 1.0
    return {"n": len(x), "b": b, "c": c, "discordant": b + c, "p_value": min(p, 1.0), "method": "exact binomial"}


def paired_accuracy_difference(first: Sequence[bool], second: Sequence[bool],
                               confidence_level: float = CONFIDENCE_LEVEL) -> dict[str, Any]:
    """{"value": accuracy(second) − accuracy(first), "ci95", "ci_method": "newcombe", "n"} on paired rows: Newcombe's
    square-and-add interval (see the module docstring); value and interval None without rows."""
    x, y = _paired_outcomes(first, second)
    n = len(x)
    if n == 0:
        return {"value": None, "ci95": None, "ci_method": None, "n": 0}
    both, only_second = int((x & y).sum()), int((~x & y).sum())
    only_first, neither = int((x & ~y).sum()), int((~x & ~y).sum())
    right_second, right_first = both + only_second, both + only_first
    p2, p1 = right_second / n, right_first / n  # the difference is p2 − p1
    l2, u2 = wilson_interval(right_second, n, confidence_level)
    l1, u1 = wilson_interval(right_first, n, confidence_level)
    margins = right_second * (n - right_second) * right_first * (n - right_first)
    phi = 0.0
    if margins:
        cross = both * neither - only_second * only_first
        phi = (cross - n / 2) / math.sqrt(margins) if cross > n / 2 else (cross / math.sqrt(margins) if cross < 0 else 0.0)
    low = p2 - p1 - math.sqrt(max((p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1), 0.0))
    high = p2 - p1 + math.sqrt(max((p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2), 0.0))
    return {"value": _round(p2 - p1), "ci95": [_round(max(low, -1.0)), _round(min(high, 1.0))], "ci_method": "newcombe",
            "n": n}


def paired_difference(statistic: Callable[..., Any], first: Sequence[Sequence[float]],
                      second: Sequence[Sequence[float]]) -> dict[str, Any]:
    """{"value": statistic(*second) − statistic(*first), "ci95", "ci_method", "n"} over the same rows, with a paired
    bootstrap interval (`bootstrap_interval`: rows resampled with both systems' values together). `first` and
    `second` are the statistic's samples for each system, e.g. (confidence, outcome) with `ece_statistic(ece)`."""
    first = tuple(np.asarray(s, dtype=np.float64) for s in first)
    second = tuple(np.asarray(s, dtype=np.float64) for s in second)
    k = len(first)
    n = len(first[0]) if k else 0
    if len(second) != k or any(len(s) != n for s in (*first, *second)):
        raise ValueError("a paired difference needs the same samples, of the same rows, for both systems")
    if n == 0:
        return {"value": None, "ci95": None, "ci_method": None, "n": 0}

    def difference(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.asarray(statistic(*samples[k:], axis=axis)) - np.asarray(statistic(*samples[:k], axis=axis))

    ci, method = bootstrap_interval(difference, *first, *second)
    return {"value": _round(float(difference(*first, *second))), "ci95": ci, "ci_method": method, "n": n}
