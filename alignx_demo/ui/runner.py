"""Generation for the UI: plain-data streams of routed generations, ZeroGPU-ready.

The functions that touch the model take and yield plain data only (strings, numbers, dicts), so
`spaces.GPU` can wrap them on a ZeroGPU Space; where the `spaces` package is not installed the
decorator is a no-op. The served model is looked up in `SERVED` by a key handed out by `serve()`:
app-level state (which model this process serves), never per-visitor state.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from alignx_demo.config import GenerationSettings, RoutingSettings
from alignx_demo.generation import RoutedGeneration
from alignx_demo.serving import ModelContext

try:  # ZeroGPU on Hugging Face Spaces
    import spaces  # type: ignore[import-not-found]

    gpu: Callable = spaces.GPU
except Exception:  # not on a Space: run where the model is
    def gpu(fn: Callable) -> Callable:
        return fn

UPDATE_EVERY_S = 0.1
"""Streaming updates are throttled to at most one page update per this many seconds."""

SERVED: dict[int, ModelContext] = {}


class GenerationError(ValueError):
    """A visitor-facing problem (bad setting, no model): the message is shown as it is."""


def serve(context: ModelContext) -> int:
    key = id(context)
    SERVED[key] = context
    return key


def settings_from(max_new_tokens: Any, do_sample: Any, temperature: Any, top_p: Any, seed: Any) -> GenerationSettings:
    """GenerationSettings from UI/API values, with a clear message for out-of-range ones."""
    try:
        max_new = float(max_new_tokens)
        seed_value = float(seed)
        if not max_new.is_integer() or not seed_value.is_integer():
            raise ValueError(f"max new tokens and seed must be whole numbers, got {max_new_tokens!r} and {seed!r}")
        return GenerationSettings(int(max_new), bool(do_sample), float(temperature), float(top_p), int(seed_value))
    except (TypeError, ValueError) as err:
        raise GenerationError(str(err)) from None


@gpu
def stream_trace(key: int, prompt: str, generation: dict[str, Any], routing: dict[str, Any],
                 every: float = UPDATE_EVERY_S) -> Iterator[dict[str, Any]]:
    """Yield the growing trace (plain data) at most every `every` seconds, and the final trace last."""
    context = SERVED.get(key)
    if context is None or context.loaded is None:
        raise GenerationError((context.problem if context else None) or "no model loaded")
    if not isinstance(prompt, str):
        raise GenerationError("the prompt must be text")
    if len(prompt) > 20_000:
        raise GenerationError(f"the prompt is too long ({len(prompt)} characters; at most 20,000)")
    try:
        run = RoutedGeneration(
            context.loaded.mocae, context.loaded.tokenizer, prompt, GenerationSettings(**generation),
            RoutingSettings(**routing), model_name=context.name,
        )
    except ValueError as err:
        raise GenerationError(str(err)) from None
    last = 0.0
    for _ in run:
        now = time.monotonic()
        if now - last >= every:
            last = now
            yield run.trace()
    trace = run.trace()
    trace["notices"] = list(context.notices) + trace["notices"]
    yield trace


def run_to_end(key: int, prompt: str, generation: dict[str, Any], routing: dict[str, Any]) -> dict[str, Any]:
    trace: dict[str, Any] = {}
    for trace in stream_trace(key, prompt, generation, routing, every=3600.0):
        pass
    return trace


def shares(trace: dict[str, Any]) -> dict[str, float]:
    """Mean weight of each axis over the generated tokens (over all tokens if none was generated)."""
    tokens = [t for t in trace.get("tokens", []) if not t["is_prompt"]] or trace.get("tokens", [])
    axes = trace.get("axes", [])
    return {a: (sum(t["weights"][a] for t in tokens) / len(tokens) if tokens else 0.0) for a in axes}
