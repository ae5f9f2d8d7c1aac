"""Axis Collapse figures: how separated the axes are in a feature space, what training changed,
what was forgotten, and the sentences that say so.

- silhouette: the mean of sklearn's per-point silhouette values, axis as cluster label (Euclidean;
  −1…1, higher = axes form separate, compact clusters);
- kNN axis purity: for each point, the share of its k nearest other points (Euclidean, in the full
  feature space) that have its axis, averaged (1/3 = chance for balanced axes);
- contrast: a regime's figure minus its reference regime's (`regimes.REFERENCE`) on the same
  prompts, with the 95 % BCa bootstrap interval of the mean of the paired per-prompt differences
  (`analysis.statistics.bootstrap_interval`); a contrast whose interval holds 0 is "within noise",
  one that excludes 0 but stays below `VISIBLE` in both figures is "measurable but too small to see
  on the map";
- routing accuracy: share of prompts whose prompt-level routing (argmax of the weights averaged
  over tokens and layers) picks the prompt's own axis (MoCaE only: the only regime with a router);
- forgetting: measured during training, for sequential SFT only (`training.baselines`): an axis's
  held-out loss after the last stage minus right after its own stage; positive = forgotten. Not
  measured for any other regime — and never a figure that is 0 by construction.

Every sentence shown beside a map is computed here from that map's numbers (`regime_sentence`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from alignx_demo.analysis.regimes import REFERENCE, REGIME_LABELS, ROUTED
from alignx_demo.analysis.statistics import bootstrap_interval, mean_statistic
from alignx_demo.config import AXES

KNN_K = 10
METRICS = ("silhouette", "knn_purity")
VISIBLE = {"silhouette": 0.03, "knn_purity": 0.05}
"""The smallest change of a figure that the sentences call visible on a map."""

METRIC_SENTENCES: dict[str, str] = {
    "silhouette": "Silhouette (−1…1): how far apart the three axis clusters are compared with their own spread; near 0 or below means the axes overlap.",
    "knn_purity": "kNN axis purity: share of each prompt's nearest neighbours that belong to its own axis; 1/3 is chance, 1 is fully separated.",
    "forgetting": "Forgetting: measured for sequential SFT only, during training — an axis's held-out loss after the later stages minus its loss right after its own stage; above 0 means that axis was forgotten.",
    "routing_accuracy": "Routing accuracy: share of prompts the router sends mostly to their own axis's expert (only MoCaE has a router).",
}


def silhouette_points(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
    """Per-point silhouette values (N,), or None when fewer than two axes or four points."""
    from sklearn.metrics import silhouette_samples

    if len(set(labels.tolist())) < 2 or len(labels) < 4:
        return None
    return torch.from_numpy(silhouette_samples(features.double().numpy(), labels.numpy(), metric="euclidean"))


def knn_purity_points(features: torch.Tensor, labels: torch.Tensor, k: int = KNN_K) -> torch.Tensor | None:
    """Per-point share (N,) of the k nearest other points that share the point's axis."""
    n = len(labels)
    if n < 2:
        return None
    k = min(k, n - 1)
    dist = torch.cdist(features.double(), features.double())
    dist.fill_diagonal_(float("inf"))
    neighbours = dist.topk(k, largest=False).indices
    return (labels[neighbours] == labels[:, None]).double().mean(1)


def silhouette(features: torch.Tensor, labels: torch.Tensor) -> float | None:
    points = silhouette_points(features, labels)
    return None if points is None else float(points.mean())


def knn_purity(features: torch.Tensor, labels: torch.Tensor, k: int = KNN_K) -> float | None:
    points = knn_purity_points(features, labels, k)
    return None if points is None else float(points.mean())


def routing_accuracy(weights: torch.Tensor, labels: torch.Tensor) -> float:
    return float((weights.argmax(-1) == labels).double().mean())


@dataclass
class Separation:
    """Per-point silhouette and kNN purity of one regime's features."""

    points: dict[str, torch.Tensor | None]

    @classmethod
    def of(cls, features: torch.Tensor, labels: torch.Tensor, k: int = KNN_K) -> Separation:
        return cls({"silhouette": silhouette_points(features, labels), "knn_purity": knn_purity_points(features, labels, k)})

    def figures(self) -> dict[str, float | None]:
        return {m: None if p is None else round(float(p.mean()), 4) for m, p in self.points.items()}

    def contrast(self, reference: Separation) -> dict[str, dict[str, float] | None]:
        """Per metric: {"delta", "low", "high"} of this minus the reference, paired over prompts."""
        out: dict[str, dict[str, float] | None] = {}
        for m in METRICS:
            a, b = self.points.get(m), reference.points.get(m)
            if a is None or b is None or len(a) != len(b) or len(a) < 2:
                out[m] = None
                continue
            d = (a - b).double().numpy()
            (low, high), _ = bootstrap_interval(mean_statistic, d, paired=False)
            out[m] = {"delta": round(float(d.mean()), 4), "low": round(low, 4), "high": round(high, 4)}
        return out


def clear(contrast: dict[str, float] | None) -> bool:
    """The interval of a contrast excludes 0."""
    return contrast is not None and (contrast["low"] > 0 or contrast["high"] < 0)


def strength(contrasts: dict[str, dict[str, float] | None]) -> str:
    """"visible" (clear and at least `VISIBLE` in some figure), "small" (clear, smaller) or "none"."""
    found = [m for m in METRICS if clear(contrasts.get(m))]
    if any(abs(contrasts[m]["delta"]) >= VISIBLE[m] for m in found):
        return "visible"
    return "small" if found else "none"


def measure(features: dict[str, torch.Tensor], labels: torch.Tensor, k: int = KNN_K) -> dict[str, dict[str, Any]]:
    """Per regime: {"silhouette", "knn_purity", "contrast": {metric: {...}} vs its reference}."""
    seps = {r: Separation.of(f, labels, k) for r, f in features.items()}
    out: dict[str, dict[str, Any]] = {}
    for regime, sep in seps.items():
        ref = REFERENCE.get(regime)
        out[regime] = sep.figures() | {
            "reference": ref if ref in seps else None,
            "contrast": sep.contrast(seps[ref]) if ref in seps else None,
        }
    return out


TRAINING_CONTRASTS = ("joint_sft", "sequential_sft", "stage1_uninstructed", "stage1_experts", "mocae")
"""Regimes whose reference differs from them by training only: the contrasts a map should show."""


def representation_score(table: dict[str, dict[str, Any]]) -> tuple[int, float]:
    """(how many training contrasts are visible, mean |Δ silhouette| over them): regimes trained
    differently should look different; more visible contrasts win, then their size."""
    n_visible, deltas = 0, []
    for regime in TRAINING_CONTRASTS:
        contrast = (table.get(regime) or {}).get("contrast")
        if not contrast:
            continue
        n_visible += strength(contrast) == "visible"
        if contrast.get("silhouette"):
            deltas.append(abs(contrast["silhouette"]["delta"]))
    return n_visible, round(sum(deltas) / len(deltas), 4) if deltas else 0.0


def choose_representation(tables: dict[str, dict[str, dict[str, Any]]]) -> tuple[str, str]:
    """The representation (name) whose maps show the most training contrasts, and why, in a sentence."""
    scores = {name: representation_score(t) for name, t in tables.items()}
    best = max(scores, key=lambda name: scores[name])
    n_visible, size = scores[best]
    total = sum(1 for r in TRAINING_CONTRASTS if (tables[best].get(r) or {}).get("contrast"))
    runner = max((n for n in scores if n != best), key=lambda n: scores[n], default=None)
    beaten = (f"; the runner-up, {runner}, shows {scores[runner][0]} (mean |Δ silhouette| {scores[runner][1]:.3f})"
              if runner else "")
    why = (f"{best} was chosen because, of the {len(tables)} representations measured, its maps show the most training "
           f"effects: {n_visible} of {total} trained regimes differ visibly from the regime they are compared with "
           f"(mean |Δ silhouette| {size:.3f}){beaten}.")
    return best, why


def _level(sil: float | None, pur: float | None, chance: float) -> str:
    if sil is None or pur is None:
        return "separation cannot be measured on so few prompts"
    if sil >= 0.25 and pur >= 0.9:
        return "the three axes form separate clusters"
    if sil < 0.1 and pur < chance + 0.2:
        return "the axes overlap"
    if sil < 0.1:
        return "the axes overlap as clusters, though each prompt's nearest neighbours mostly share its axis"
    return "the axes are partly separated"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _delta(c: dict[str, float] | None) -> str:
    return "n/a" if c is None else f"{c['delta']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]"


def regime_sentence(regime: str, row: dict[str, Any], table: dict[str, dict[str, Any]], *,
                    routing_accuracy: float | None = None, misrouted: int | None = None) -> str:
    """What this regime's picture means, computed from its figures and its reference's (`table` holds
    every regime's row from `measure`). Regimes without a router are never described as routed."""
    sil, pur = row.get("silhouette"), row.get("knn_purity")
    chance = 1.0 / len(AXES)
    fig = f"silhouette {_num(sil)}, kNN purity {_num(pur)} (chance {chance:.2f})"
    parts = [f"{fig}: {_level(sil, pur, chance)}."]
    ref = row.get("reference")
    contrast = row.get("contrast") or {}
    if ref:
        ref_row = table[ref]
        ref_label = REGIME_LABELS[ref]
        what = {"base_instructed": "the instruction", "mocae": "adding the routed experts"}.get(regime, "training")
        deltas = f"silhouette {_delta(contrast.get('silhouette'))}, purity {_delta(contrast.get('knn_purity'))}"
        how = strength(contrast)
        if how == "none":
            parts.append(f"Compared with {ref_label} (silhouette {_num(ref_row['silhouette'])}, purity {_num(ref_row['knn_purity'])}) "
                         f"the difference is within noise ({deltas}): on this map {what} makes no contrast.")
        else:
            main = max((m for m in METRICS if clear(contrast.get(m))), key=lambda m: abs(contrast[m]["delta"]) / VISIBLE[m])
            verb, where = ("pushes", "further apart") if contrast[main]["delta"] > 0 else ("draws", "closer together")
            if how == "small":
                parts.append(f"Compared with {ref_label}, {what} {verb} the axes slightly {where} ({deltas}): measurable, "
                             f"but too small to see on the map.")
            else:
                parts.append(f"Compared with {ref_label}, {what} visibly {verb} the axes {where} ({deltas}).")
        base = table.get("base")
        if regime == "stage1_experts" and base and sil is not None and base.get("silhouette") is not None:
            gain = sil - base["silhouette"]
            from_instruction = ref_row["silhouette"] - base["silhouette"]
            if gain > 0.02:
                share = max(0.0, min(1.0, from_instruction / gain))
                parts.append(f"Of its silhouette gain over the plain base ({gain:+.3f}), {share:.0%} is already there when the "
                             f"untrained base gets the same instruction; {1 - share:.0%} is what training added.")
    else:
        parts.append("The reference the other maps are compared with.")
    if regime in ROUTED and routing_accuracy is not None:
        wrong = f" ({misrouted} misrouted, ringed)" if misrouted is not None else ""
        parts.append(f"The calibrated router sends {routing_accuracy:.0%} of these prompts mostly to their own axis's expert{wrong}.")
    return " ".join(parts)


def summary_sentence(rows: dict[str, dict[str, Any]]) -> str:
    """One sentence for the whole page: which regimes differ visibly from their reference, which
    only measurably, which not at all (from each row's "strength")."""
    groups: dict[str, list[str]] = {"visible": [], "small": [], "none": []}
    for regime, row in rows.items():
        if row.get("strength") in groups:
            groups[row["strength"]].append(f"{REGIME_LABELS[regime]} (vs {REGIME_LABELS[row['reference']]})")
    said = [f"{label}: {', '.join(groups[key])}" for key, label in (
        ("visible", "Visible contrast"), ("small", "measurable but too small to see"), ("none", "no contrast"))
        if groups[key]]
    return ("; ".join(said) + ".") if said else "No regime could be compared with its reference."


def forgetting(summary: dict[str, Any] | None) -> tuple[dict[str, Any] | None, str]:
    """Sequential SFT's forgetting from a bundle's `logs/baselines_summary.json`:
    ({axis: {"forgetting", "loss_after_own_stage", "loss_after_last_stage"}} or None, a note saying
    where it comes from or why it is not measured)."""
    if summary is None:
        return None, "not measured: the bundle has no logs/baselines_summary.json"
    sequential = summary.get("sequential_sft") or {}
    stages = sequential.get("stages")
    measured = sequential.get("forgetting")
    if not isinstance(stages, list) or not isinstance(measured, dict):
        return None, ("not measured: this bundle's logs/baselines_summary.json predates per-stage held-out losses "
                      "(retrain with `train baselines` to measure it)")
    own = {s["axis"]: s.get("heldout_loss", {}).get(s["axis"]) for s in stages if isinstance(s, dict) and "axis" in s}
    last = stages[-1].get("heldout_loss", {}) if stages and isinstance(stages[-1], dict) else {}
    rows = {}
    for axis in AXES:
        if axis in measured:
            rows[axis] = {"forgetting": round(float(measured[axis]), 4), "loss_after_own_stage": own.get(axis),
                          "loss_after_last_stage": last.get(axis)}
    if not rows:
        return None, "not measured: no axis was trained before the last sequential stage"
    order = " → ".join(s.get("axis", "?") for s in stages)
    return rows, (f"measured during training ({order}): each axis's held-out loss after the last stage minus right after "
                  f"its own stage (the last stage's axis has nothing after it)")
