"""Placing a visitor's prompt on the precomputed maps without refitting any projection.

For each regime the prompt's features are computed exactly as for the map points (same regime,
layer and pooling, see `regimes`), its k nearest map points are found in that feature space
(Euclidean), and its map position is the average of their 2-D coordinates. This is instant and
says what it is: a neighbourhood, not a projection. In the Stage 1 regime a prompt has no axis of
its own, so it is placed with the preamble and expert of the axis the calibrated router picks.
"""

from __future__ import annotations

from typing import Any

import torch

from alignx_demo.analysis.regimes import REGIMES, RegimeSet
from alignx_demo.config import AXES

DEFAULT_K = 5


def place(regimes: RegimeSet, map_data: dict[str, Any], features: dict[str, torch.Tensor], prompt: str, k: int = DEFAULT_K) -> dict[str, Any]:
    """{"prompt", "k", "router_axis", "router_weights", "regimes": {regime: {x, y, neighbours} | {unavailable}}}."""
    prompts = map_data["prompts"]
    _, weights = regimes.pooled("mocae", [prompt], [None])
    router_axis = AXES[int(weights[0].argmax())]
    result: dict[str, Any] = {
        "prompt": prompt,
        "k": k,
        "router_axis": router_axis,
        "router_weights": {a: round(float(weights[0][i]), 4) for i, a in enumerate(AXES)},
        "method": f"average map position of the {k} nearest map prompts in the regime's feature space (no refit)",
        "regimes": {},
    }
    for regime in REGIMES:
        info = map_data["regimes"].get(regime)
        bank = features.get(regime)
        if info is None or bank is None:
            result["regimes"][regime] = {"unavailable": "no precomputed map for this regime"}
            continue
        if regime in regimes.missing:
            result["regimes"][regime] = {"unavailable": regimes.missing[regime]}
            continue
        vec, _ = regimes.pooled(regime, [prompt], [router_axis])
        if vec.shape[1] != bank.shape[1]:
            result["regimes"][regime] = {"unavailable": "the loaded model's features do not match the precomputed map"}
            continue
        dist = torch.cdist(vec.double(), bank.double())[0]
        kk = min(k, len(dist))
        nearest = dist.topk(kk, largest=False)
        coords = torch.tensor(info["coords"], dtype=torch.float64)[nearest.indices]
        x, y = coords.mean(0).tolist()
        entry: dict[str, Any] = {"x": round(x, 4), "y": round(y, 4), "neighbours": []}
        for d, i in zip(nearest.values.tolist(), nearest.indices.tolist()):
            entry["neighbours"].append({"index": i, "axis": prompts[i]["axis"], "text": prompts[i]["text"], "distance": round(d, 4)})
        if regime == "stage1_experts":
            entry["placed_as"] = router_axis
        result["regimes"][regime] = entry
    return result
