"""Where the router decides: prompt-level routing as the prompt grows, and the point where it settles.

Prompt-level weights (as in `analysis.routing` and the evaluation): the per-layer routing weights
averaged over the prompt's tokens after the template prefix every prompt shares, and over layers;
when routing is calibrated, that mean goes through the stack's run-level part
(`CalibrationStack.pool`). Every router reads only positions ≤ t (causal attention, and the causal
running mean of `modeling.layer.CausalMean`), so the weights one forward of the whole prompt gives at
position t are exactly those a forward of the prefix up to t gives. One forward therefore yields the
prompt-level weights of every prefix:

    curve[i] = pool(mean_{s ≤ i} mean_ℓ p_ℓ,s)        (s, i counted from the first token after the prefix)

The **settle index** is the first i from which the routed axis (argmax of curve[i]) never changes
again; the confidence then is max(curve[i]). The last point of the curve is the prompt-level weights.
"""

from __future__ import annotations

from typing import Any

import torch

from alignx_demo.analysis.common import (
    Pool, encode_routed_prompt, layer_mean_weights, pooler, routing_description, unwrap,
)
from alignx_demo.config import AXES, RoutingSettings
from alignx_demo.generation import IncrementalDecoder, context_length, input_device


def cumulative_weights(token_weights: torch.Tensor, pool: Pool | None = None) -> torch.Tensor:
    """(N, K) layer-mean token weights → (N, K) prompt-level weights of each prefix (pooled if given)."""
    w = token_weights.double()
    counts = torch.arange(1, w.shape[0] + 1, dtype=w.dtype).unsqueeze(1)
    curve = (w.cumsum(0) / counts).to(token_weights.dtype)
    return pool(curve) if pool is not None else curve


def settle_point(curve: torch.Tensor, axes: tuple[str, ...] = AXES) -> dict[str, Any]:
    """The first index from which the routed axis (of `axes`, the curve's columns) never changes, the axis and the
    confidence there."""
    routed = curve.argmax(-1)
    last = int(routed[-1])
    changed = (routed != last).nonzero()
    index = int(changed[-1]) + 1 if len(changed) else 0
    return {"index": index, "axis": axes[last], "confidence": round(float(curve[index, last]), 6),
            "tokens": int(curve.shape[0]), "fraction": round(index / max(1, curve.shape[0] - 1), 6)}


def _weights_dict(row: torch.Tensor, axes: tuple[str, ...]) -> dict[str, float]:
    return {a: round(float(row[k]), 6) for k, a in enumerate(axes)}


@torch.no_grad()
def settle_curve(loaded_or_mocae: Any, tokenizer: Any, prompt: str, *, routing: RoutingSettings | None = None) -> dict[str, Any]:
    """The prompt-level weights as the prompt grows, from one forward, and where routing settles.

    Returns plain JSON-able data:

        {"schema": "alignx-settle/1", "prompt", "model", "axes", "routing": {mode, calibrated, axis_prior,
         prior_blend, calibration}, "notices": [...],
         "points": [{"index", "position", "text", "token_weights": {axis: w}, "weights": {axis: w},
                     "routed", "confidence"}],            # one per token after the template prefix
         "settle": {"index", "position", "text", "axis", "confidence", "tokens", "fraction"},
         "weights": {axis: w}, "routed", "confidence"}   # the prompt-level weights = the last point

    `index` counts tokens after the prefix from 0; `position` is the token's index in the sequence.
    """
    mocae, tokenizer, model_name = unwrap(loaded_or_mocae, tokenizer)
    routing = routing or RoutingSettings(mode="soft", calibrated=True)
    encoded = encode_routed_prompt(tokenizer, prompt, context=context_length(mocae.model))
    with mocae.lock, mocae.routed(routing), mocae.record() as record:
        mocae(input_ids=torch.tensor([encoded.ids], device=input_device(mocae.model)))
    token_weights = layer_mean_weights(record)[0, encoded.start :]  # (N, K)
    curve = cumulative_weights(token_weights, pooler(mocae, routing))
    decoder = IncrementalDecoder(tokenizer, skip_special_tokens=False)
    texts = [decoder.push(i) for i in encoded.ids][encoded.start :]
    axes = mocae.axes
    points = [{"index": i, "position": encoded.start + i, "text": texts[i],
               "token_weights": _weights_dict(token_weights[i], axes),
               "weights": _weights_dict(curve[i], axes), "routed": axes[int(curve[i].argmax())],
               "confidence": round(float(curve[i].max()), 6)} for i in range(len(texts))]
    settle = settle_point(curve, axes)
    settle.update(position=encoded.start + settle["index"], text=texts[settle["index"]])
    last = points[-1]
    return {"schema": "alignx-settle/1", "prompt": encoded.prompt, "model": model_name, "axes": list(axes),
            "routing": routing_description(mocae, routing), "notices": encoded.notices, "points": points,
            "settle": settle, "weights": last["weights"], "routed": last["routed"], "confidence": last["confidence"]}
