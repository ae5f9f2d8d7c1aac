"""The model this process serves, and how its work reserves a ZeroGPU.

The served model is looked up in `SERVED` by a key handed out by `serve()`: app-level state (which
model this process serves), never per-visitor state.

ZeroGPU, as its documentation asks: the outermost functions that touch the model — `runner.stream_runs`
(every generation of one request, so a comparison or the four presets hold the GPU once) and the
analysis endpoints' `*_plain` functions — are decorated with `gpu(duration=gpu_seconds)`
(`spaces.GPU`), a reservation that fits the request (the operator's per-request time limit plus a
start-up margin). They take and yield plain data only (strings, numbers, lists, dicts; no tensors, no
events), because on a ZeroGPU Space they run in a worker process. Where the `spaces` package is not
installed the decorator is a no-op.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from alignx_demo.serving import Limits, ModelContext
from alignx_demo.ui.validation import GenerationError

try:  # ZeroGPU on Hugging Face Spaces
    import spaces  # type: ignore[import-not-found]

    gpu: Callable = spaces.GPU
except Exception:  # not on a Space: run where the model is
    def gpu(fn: Callable | None = None, **_: Any) -> Callable:
        """No-op stand-in for `spaces.GPU`, used bare (`@gpu`) or with settings (`@gpu(duration=...)`)."""
        return fn if fn is not None else (lambda inner: inner)


GPU_START_S = 15
"""Seconds added to a ZeroGPU reservation for attaching the GPU and moving the model onto it."""
MODEL_EVENT: dict[str, Any] = {"preprocess": False, "concurrency_id": "model"}
"""Event settings of every endpoint that uses the model: inputs reach it raw and are checked by `ui.validation`, and
all model work shares one queue group, so the operator's concurrency limit bounds it as a whole."""
SERVED: dict[int, ModelContext] = {}


def serve(context: ModelContext) -> int:
    key = id(context)
    SERVED[key] = context
    return key


def limits_of(key: int) -> Limits:
    return SERVED[key].limits


def model_ready(key: int) -> bool:
    context = SERVED.get(key)
    return context is not None and context.loaded is not None


def served_model(key: int) -> ModelContext:
    """The served model's context; a GenerationError saying why when no model is loaded."""
    context = SERVED.get(key)
    if context is None or context.loaded is None:
        raise GenerationError((context.problem if context else None) or "no model loaded")
    return context


def served_axes(key: int) -> tuple[str, ...]:
    """The served model's axes (its experts' names): what an uploaded file's labels must name."""
    return served_model(key).loaded.mocae.axes


def token_cap(key: int, several: bool = False) -> int:
    """Highest max_new_tokens of an endpoint of the served model (`several`: one that runs several
    generations per request); see `ModelContext.new_token_cap`."""
    return SERVED[key].new_token_cap(several)


def request_deadline(key: int) -> float:
    """The `time.monotonic()` time by which a request starting now must stop generating."""
    return time.monotonic() + limits_of(key).request_seconds


def gpu_seconds(key: int, *_: Any, **__: Any) -> int:
    """ZeroGPU reservation of one request, in seconds: its time budget (every model endpoint stops at the
    operator's per-request limit) plus the start-up margin. Called with the decorated function's arguments."""
    return math.ceil(limits_of(key).request_seconds) + GPU_START_S
