"""Axis Collapse figures: how separated the axes are in a feature space, and what was forgotten.

- silhouette: sklearn's silhouette score of the features with the axis as cluster label
  (Euclidean; −1..1, higher = axes form separate, compact clusters);
- kNN axis purity: for each point, the share of its k nearest other points (Euclidean, in the
  full feature space) that have its axis, averaged (1/3 = chance for balanced axes);
- routing accuracy: share of prompts whose prompt-level routing (argmax of the weights averaged
  over tokens and layers) picks the prompt's own axis (MoCaE only; the other regimes have no router);
- forgetting: per axis, the held-out LM loss of the regime minus that of the axis's own Stage 1
  expert (from an evaluation report); positive = the regime lost (or never learned) what the
  expert knows.
"""

from __future__ import annotations

from typing import Any

import torch

from alignx_demo.config import AXES

METRIC_SENTENCES: dict[str, str] = {
    "silhouette": "Silhouette (−1…1): how far apart the three axis clusters are compared with their own spread; near 0 or below means the axes overlap.",
    "knn_purity": "kNN axis purity: share of each prompt's nearest neighbours that belong to its own axis; 1/3 is chance, 1 is fully separated.",
    "forgetting": "Forgetting: held-out loss per axis minus that of the axis's own Stage 1 expert; above 0 means this regime lost (or never learned) what the expert knows.",
    "routing_accuracy": "Routing accuracy: share of prompts the router sends mostly to their own axis's expert (only MoCaE has a router).",
}

REGIME_SYSTEMS: dict[str, str | None] = {
    "base": "base",
    "joint_sft": "joint_sft",
    "sequential_sft": "sequential_sft",
    "stage1_experts": None,  # each axis measured with its own expert
    "mocae": "mocae",
}


def silhouette(features: torch.Tensor, labels: torch.Tensor) -> float | None:
    from sklearn.metrics import silhouette_score

    if len(set(labels.tolist())) < 2 or len(labels) < 4:
        return None
    return float(silhouette_score(features.double().numpy(), labels.numpy(), metric="euclidean"))


def knn_purity(features: torch.Tensor, labels: torch.Tensor, k: int = 10) -> float | None:
    n = len(labels)
    if n < 2:
        return None
    k = min(k, n - 1)
    dist = torch.cdist(features.double(), features.double())
    dist.fill_diagonal_(float("inf"))
    neighbours = dist.topk(k, largest=False).indices
    return float((labels[neighbours] == labels[:, None]).double().mean())


def routing_accuracy(weights: torch.Tensor, labels: torch.Tensor) -> float:
    return float((weights.argmax(-1) == labels).double().mean())


def forgetting(heldout_loss: dict[str, dict[str, float]] | None) -> dict[str, Any]:
    """Per regime: {axis: {"loss", "expert_loss", "forgetting"}}; empty when no losses are known."""
    if not heldout_loss:
        return {}
    out: dict[str, Any] = {}
    for regime, system in REGIME_SYSTEMS.items():
        rows = {}
        for axis in AXES:
            expert = heldout_loss.get(f"expert_{axis}", {}).get(axis)
            loss = expert if system is None else heldout_loss.get(system, {}).get(axis)
            if loss is None or expert is None:
                continue
            rows[axis] = {"loss": round(loss, 4), "expert_loss": round(expert, 4), "forgetting": round(loss - expert, 4)}
        if rows:
            out[regime] = rows
    return out
