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

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from alignx_demo.config import AXES, RoutingSettings
from alignx_demo.data.templates import encode_prompt, template_prefix_length
from alignx_demo.generation import IncrementalDecoder, clean_prompt, context_length, input_device

Pool = Callable[[torch.Tensor], torch.Tensor]


def unwrap(loaded_or_mocae: Any, tokenizer: Any = None) -> tuple[Any, Any, str]:
    """(mocae, tokenizer, model description) from a `LoadedModel` or a `MoCaEModel` and its tokenizer."""
    if hasattr(loaded_or_mocae, "mocae"):
        return loaded_or_mocae.mocae, tokenizer or loaded_or_mocae.tokenizer, loaded_or_mocae.description
    if tokenizer is None:
        raise ValueError("a MoCaEModel needs its tokenizer (or pass the LoadedModel that load_mocae returns)")
    return loaded_or_mocae, tokenizer, ""


def is_calibrated(mocae: Any, routing: RoutingSettings) -> bool:
    """Whether these settings really calibrate: asked for, and the model has a calibration stack."""
    return bool(routing.calibrated and mocae.calibration is not None)


def pooler(mocae: Any, routing: RoutingSettings) -> Pool | None:
    """The run-level calibrator for prompt-level means (None when routing is uncalibrated)."""
    return getattr(mocae.calibration, "pool", None) if is_calibrated(mocae, routing) else None


def routing_description(mocae: Any, routing: RoutingSettings) -> dict[str, Any]:
    """The routing settings and the calibration parts in use, as plain data."""
    calibrated = is_calibrated(mocae, routing)
    return {**routing.to_dict(), "calibrated": calibrated, "calibration": mocae.calibration.enabled() if calibrated else None}


@dataclass
class RoutedPrompt:
    """A prompt's token ids as routed, and `start`: the first token after the shared template prefix."""

    prompt: str
    ids: list[int]
    start: int
    notices: list[str] = field(default_factory=list)


def encode_routed_prompt(tokenizer: Any, prompt: Any, *, context: int, room: int = 0, skip: int | None = None) -> RoutedPrompt:
    """Clean and encode a prompt as the app does, cut from the left to leave `room` tokens for generation.

    A cut prompt has lost its template prefix, so all its tokens count (as in `collect_routing`).
    Raises ValueError for a non-text or empty prompt.
    """
    text, notices = clean_prompt(prompt)
    ids = encode_prompt(tokenizer, text)
    keep = max(1, context - room)
    skip = template_prefix_length(tokenizer) if skip is None else skip
    start = skip
    if len(ids) > keep:
        notices.append(f"prompt truncated from the left: {len(ids)} tokens to the last {keep} (context {context})")
        ids, start = ids[-keep:], 0
    return RoutedPrompt(text, ids, min(start, len(ids) - 1), notices)


def cumulative_weights(token_weights: torch.Tensor, pool: Pool | None = None) -> torch.Tensor:
    """(N, K) layer-mean token weights → (N, K) prompt-level weights of each prefix (pooled if given)."""
    w = token_weights.double()
    counts = torch.arange(1, w.shape[0] + 1, dtype=w.dtype).unsqueeze(1)
    curve = (w.cumsum(0) / counts).to(token_weights.dtype)
    return pool(curve) if pool is not None else curve


def settle_point(curve: torch.Tensor) -> dict[str, Any]:
    """The first index from which the routed axis never changes, the axis and the confidence there."""
    routed = curve.argmax(-1)
    last = int(routed[-1])
    changed = (routed != last).nonzero()
    index = int(changed[-1]) + 1 if len(changed) else 0
    return {"index": index, "axis": AXES[last], "confidence": round(float(curve[index, last]), 6),
            "tokens": int(curve.shape[0]), "fraction": round(index / max(1, curve.shape[0] - 1), 6)}


def layer_mean_weights(record: Any, forward: int = 0) -> torch.Tensor:
    """The weights of one recorded forward averaged over layers, (B, T, K) in fp32 on the CPU (routers
    of a base split over devices record on their own devices)."""
    return torch.stack([w[forward].float().cpu() for w in record.weights]).mean(0)


def _weights_dict(row: torch.Tensor) -> dict[str, float]:
    return {a: round(float(row[k]), 6) for k, a in enumerate(AXES)}


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
    points = [{"index": i, "position": encoded.start + i, "text": texts[i], "token_weights": _weights_dict(token_weights[i]),
               "weights": _weights_dict(curve[i]), "routed": AXES[int(curve[i].argmax())],
               "confidence": round(float(curve[i].max()), 6)} for i in range(len(texts))]
    settle = settle_point(curve)
    settle.update(position=encoded.start + settle["index"], text=texts[settle["index"]])
    last = points[-1]
    return {"schema": "alignx-settle/1", "prompt": encoded.prompt, "model": model_name, "axes": list(AXES),
            "routing": routing_description(mocae, routing), "notices": encoded.notices, "points": points,
            "settle": settle, "weights": last["weights"], "routed": last["routed"], "confidence": last["confidence"]}
