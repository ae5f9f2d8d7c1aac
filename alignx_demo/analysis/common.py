"""What the analysis tools share: the model they are given, a prompt encoded as the app routes it, the
layer-mean weights of a recorded forward, and the routing settings described as plain data.

Used by the settle curve (`analysis.settle`), the routing analysis of a prompt set (`analysis.failures`)
and counterfactual attribution (`analysis.attribution`), so that all three read a model, a prompt and a
record the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from alignx_demo.config import RoutingSettings
from alignx_demo.data.templates import encode_prompt, template_prefix_length
from alignx_demo.generation import clean_prompt

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


def layer_mean_weights(record: Any, forward: int = 0) -> torch.Tensor:
    """The weights of one recorded forward averaged over layers, (B, T, K) in fp32 on the CPU (routers
    of a base split over devices record on their own devices)."""
    return torch.stack([w[forward].float().cpu() for w in record.weights]).mean(0)
