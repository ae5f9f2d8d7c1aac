"""Placing a visitor's prompt on the precomputed maps without refitting any projection.

For each regime the prompt's features are computed exactly as for the map points (same regime and
the representation the map records, see `regimes`), its k nearest map points are found in that
feature space (Euclidean), and its map position is the average of their 2-D coordinates. This is
instant and says what it is: a neighbourhood, not a projection. A visitor's prompt has no axis of
its own, so in the regimes that need one (the axis instruction, a forced Stage 1 expert) it is
placed with those of the axis the calibrated router picks (`placed_as`).
"""

from __future__ import annotations

from typing import Any

import torch

from alignx_demo.analysis.regimes import EXPERT_FORCED, INSTRUCTED, REGIMES, Representation, RegimeSet
from alignx_demo.config import AXES

DEFAULT_K = 5


def place(regimes: RegimeSet, map_data: dict[str, Any], features: dict[str, torch.Tensor], prompt: str, k: int = DEFAULT_K) -> dict[str, Any]:
    """{"prompt", "k", "router_axis", "router_weights", "representation", "regimes": {regime: {x, y,
    neighbours} | {unavailable}}}."""
    prompts = map_data["prompts"]
    rep = Representation.parse(map_data["feature"]["representation"])
    routed = regimes.features("mocae", [prompt], [None], [rep])
    router_axis = AXES[int(routed.weights[0].argmax())]
    result: dict[str, Any] = {
        "prompt": prompt,
        "k": k,
        "router_axis": router_axis,
        "router_weights": {a: round(float(routed.weights[0][i]), 4) for i, a in enumerate(AXES)},
        "representation": rep.name,
        "method": f"average map position of the {k} nearest map prompts in the regime's feature space (no refit)",
        "regimes": {},
    }
    too_deep = rep.depth > regimes.mocae.n_layers
    for regime in REGIMES:
        info = map_data["regimes"].get(regime)
        bank = features.get(regime)
        if info is None or bank is None:
            result["regimes"][regime] = {"unavailable": "no precomputed map for this regime"}
            continue
        if regime in regimes.missing:
            result["regimes"][regime] = {"unavailable": regimes.missing[regime]}
            continue
        vec = None if too_deep else (routed if regime == "mocae" else regimes.features(regime, [prompt], [router_axis], [rep])).features[rep.name]
        if vec is None or vec.shape[1] != bank.shape[1]:
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
        if regime in INSTRUCTED or regime in EXPERT_FORCED:
            entry["placed_as"] = router_axis
        result["regimes"][regime] = entry
    return result
