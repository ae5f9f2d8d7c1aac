"""Calibration and accuracy of routing against axis labels.

ECE is torchmetrics' top-label calibration error (15 equal-width bins, L1); classwise ECE is the
mean over the three axes of the one-vs-rest binary calibration error; Brier is the mean squared
distance between p and the one-hot label (summed over classes); NLL is −log p[label].
"""

from __future__ import annotations

import torch
from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error

N_BINS = 15


def routing_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Metrics of probabilities (N, K) against integer labels (N,)."""
    probs = probs.float().clamp(1e-8, 1.0)
    probs = probs / probs.sum(-1, keepdim=True)
    labels = labels.long()
    k = probs.shape[-1]
    onehot = torch.nn.functional.one_hot(labels, k).float()
    classwise = [
        float(binary_calibration_error(probs[:, c], (labels == c).long(), n_bins=N_BINS, norm="l1")) for c in range(k)
    ]
    return {
        "n": int(len(labels)),
        "accuracy": float((probs.argmax(-1) == labels).float().mean()),
        "ece": float(multiclass_calibration_error(probs, labels, num_classes=k, n_bins=N_BINS, norm="l1")),
        "classwise_ece": sum(classwise) / k,
        "brier": float(((probs - onehot) ** 2).sum(-1).mean()),
        "nll": float(-probs.gather(1, labels[:, None]).log().mean()),
        "mean_confidence": float(probs.max(-1).values.mean()),
    }


def reliability(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = N_BINS) -> list[dict[str, float]]:
    """Reliability-diagram data: per confidence bin, its count, mean confidence and accuracy."""
    confidence, predicted = probs.float().max(-1)
    correct = (predicted == labels).float()
    edges = torch.linspace(0, 1, n_bins + 1)
    index = torch.bucketize(confidence, edges[1:-1], right=True)
    rows = []
    for b in range(n_bins):
        mask = index == b
        n = int(mask.sum())
        rows.append({
            "bin_lower": float(edges[b]),
            "bin_upper": float(edges[b + 1]),
            "count": n,
            "confidence": float(confidence[mask].mean()) if n else None,
            "accuracy": float(correct[mask].mean()) if n else None,
        })
    return rows
