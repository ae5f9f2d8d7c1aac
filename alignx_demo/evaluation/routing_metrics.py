"""Calibration and accuracy of routing against axis labels.

Every calibration figure comes from `analysis.statistics` (the project's one ECE definition:
torchmetrics' binning, 15 bins, L1, in float64). ECE is the top-label calibration error (confidence =
max p, outcome = argmax is the label); debiased ECE is its bias-corrected estimate (Kumar et al. 2019,
see `analysis.statistics`); classwise ECE is the mean over the three axes of the one-vs-rest
calibration error (confidence = p_k, outcome = label is k); Brier is the mean squared distance
between p and the one-hot label (summed over classes); NLL is −log p[label]. With `intervals`,
accuracy gets a Wilson interval and ECE / debiased ECE BCa bootstrap intervals over rows — for
prompt- and generation-level rows (tokens of one prompt are not independent: no intervals there).
"""

from __future__ import annotations

from typing import Any

import torch

from alignx_demo.analysis.statistics import N_BINS, calibration_summary, ece, ece_debiased, reliability_bins


def _top_label(probs: torch.Tensor, labels: torch.Tensor) -> tuple[Any, Any]:
    confidence, predicted = probs.double().max(-1)
    return confidence.numpy(), (predicted == labels).double().numpy()


def routing_metrics(probs: torch.Tensor, labels: torch.Tensor, *, intervals: bool = False) -> dict[str, Any]:
    """Metrics of probabilities (N, K) against integer labels (N,); with `intervals`, also
    "accuracy_ci95", "ece_ci95", "ece_debiased_ci95" and "ci_methods"."""
    probs = probs.double().clamp(1e-8, 1.0).cpu()
    probs = probs / probs.sum(-1, keepdim=True)
    labels = labels.long().cpu()
    k = probs.shape[-1]
    onehot = torch.nn.functional.one_hot(labels, k).double()
    confidence, correct = _top_label(probs, labels)
    classwise = [ece(probs[:, c].numpy(), (labels == c).double().numpy()) for c in range(k)]
    out: dict[str, Any] = {
        "n": int(len(labels)),
        "accuracy": float(correct.mean()),
        "ece": ece(confidence, correct),
        "ece_debiased": ece_debiased(confidence, correct),
        "classwise_ece": sum(classwise) / k,
        "brier": float(((probs - onehot) ** 2).sum(-1).mean()),
        "nll": float(-probs.gather(1, labels[:, None]).log().mean()),
        "mean_confidence": float(confidence.mean()),
    }
    if intervals:
        summary = calibration_summary(confidence, correct)
        out.update({key: summary[key] for key in ("accuracy_ci95", "ece_ci95", "ece_debiased_ci95", "ci_methods")})
    return out


def reliability(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = N_BINS) -> list[dict[str, Any]]:
    """Reliability-diagram data, the ECE's own bins (`analysis.statistics.reliability_bins`): per
    confidence bin its count, mean confidence and accuracy; the last bin holds confidence exactly 1."""
    confidence, correct = _top_label(probs.double().cpu(), labels.long().cpu())
    return reliability_bins(confidence, correct, n_bins)
