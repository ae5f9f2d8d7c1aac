"""Generation for the UI: request checks, plain-data streams of routed generations, ZeroGPU-ready.

The named endpoints take their inputs unprocessed (`preprocess=False`) and check them here, in one
place: a prompt must be text, numbers must be finite numbers in the widget's range (whole where a
count is meant), flags true or false, choices one of the listed ones; anything else is rejected with
a sentence saying what is wrong (nothing is clamped, except an over-long prompt, which is cut with a
notice). `visitor_errors` turns every failure of an endpoint, expected or not, into a `gr.Error`
with such a sentence, so a caller never sees a traceback and the server keeps serving.

ZeroGPU, as its documentation asks: the outermost functions that touch the model — `stream_runs`
(every generation of one request, so a comparison or the four presets hold the GPU once) and the
analysis endpoints' `*_plain` functions — are decorated with `spaces.GPU(duration=gpu_seconds)`, a
reservation that fits the request (the operator's per-request time limit plus a start-up margin).
They take and yield plain data only (strings, numbers, lists, dicts; no tensors, no events), because
on a ZeroGPU Space they run in a worker process. Stop is therefore checked by the caller in the
main process between updates, and closing the stream ends the generation. Where the `spaces`
package is not installed the decorator is a no-op. The served model is looked up in `SERVED` by a
key handed out by `serve()`: app-level state (which model this process serves), never per-visitor
state.
"""

from __future__ import annotations

import functools
import html
import inspect
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr
import torch

from alignx_demo.config import GenerationSettings, RoutingSettings, validate_axis_prior
from alignx_demo.generation import RoutedGeneration, clean_prompt
from alignx_demo.serving import MAX_REQUEST_CHARS, Limits, ModelContext

try:  # ZeroGPU on Hugging Face Spaces
    import spaces  # type: ignore[import-not-found]

    gpu: Callable = spaces.GPU
except Exception:  # not on a Space: run where the model is
    def gpu(fn: Callable | None = None, **_: Any) -> Callable:
        """No-op stand-in for `spaces.GPU`, used bare (`@gpu`) or with settings (`@gpu(duration=...)`)."""
        return fn if fn is not None else (lambda inner: inner)

log = logging.getLogger(__name__)

GPU_START_S = 15
"""Seconds added to a ZeroGPU reservation for attaching the GPU and moving the model onto it."""
UPDATE_EVERY_S = 0.1
"""Streaming updates are throttled to at most one page update per this many seconds."""
TEMPERATURE_RANGE = (0.1, 2.0)
TOP_P_RANGE = (0.05, 1.0)
SEED_MAX = 2**32 - 1
MODES = ("soft", "top1")
MODEL_EVENT: dict[str, Any] = {"preprocess": False, "concurrency_id": "model"}
"""Event settings of every endpoint that uses the model: inputs reach it raw and are checked here, and
all model work shares one queue group, so the operator's concurrency limit bounds it as a whole."""
OUT_OF_MEMORY = ("The server ran out of memory while working on this request. Try a shorter prompt or fewer new "
                 "tokens; the app itself is still running.")

SERVED: dict[int, ModelContext] = {}


class GenerationError(ValueError):
    """A visitor-facing problem (bad setting, no model): the message is shown as it is."""


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


def token_cap(key: int, several: bool = False) -> int:
    """Highest max_new_tokens of an endpoint of the served model (`several`: one that runs several
    generations per request); see `ModelContext.new_token_cap`."""
    return SERVED[key].new_token_cap(several)


def request_deadline(key: int) -> float:
    """The `time.monotonic()` time by which a request starting now must stop generating."""
    return time.monotonic() + limits_of(key).request_seconds


def _bound(value: int | float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def number(value: Any, name: str, low: float, high: float, whole: bool = False) -> int | float:
    """`value` if it is a finite number in [low, high] (and whole, when asked); a GenerationError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GenerationError(f"{name} must be a number, got {_shown(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise GenerationError(f"{name} must be a finite number, got {value}")
    if whole and isinstance(value, float) and not value.is_integer():
        raise GenerationError(f"{name} must be a whole number, got {value}")
    if not low <= value <= high:
        raise GenerationError(f"{name} must be from {_bound(low)} to {_bound(high)}, got {_shown(value)}")
    return int(value) if whole else float(value)


def flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise GenerationError(f"{name} must be true or false, got {_shown(value)}")
    return value


def one_of(value: Any, name: str, options: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in options:
        raise GenerationError(f"{name} must be one of {', '.join(repr(o) for o in options)}, got {_shown(value)}")
    return value


def request_text(prompt: Any) -> str:
    """The prompt as sent, if it is text of an acceptable size (cleaning comes after)."""
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, str):
        raise GenerationError(f"the prompt must be text, got {type(prompt).__name__}")
    if len(prompt) > MAX_REQUEST_CHARS:
        raise GenerationError(f"the prompt is too long ({len(prompt):,} characters; at most {MAX_REQUEST_CHARS:,})")
    return prompt


def check_prompt(prompt: Any, limits: Limits) -> tuple[str, list[str]]:
    """The cleaned prompt and notices of what cleaning changed (see `generation.clean_prompt`)."""
    try:
        return clean_prompt(request_text(prompt), limits.max_prompt_chars)
    except ValueError as err:
        raise GenerationError(str(err)) from None


def settings_from(max_new_tokens: Any, do_sample: Any, temperature: Any, top_p: Any, seed: Any, cap: int) -> GenerationSettings:
    """GenerationSettings from UI/API values, refusing anything outside the widgets' ranges (`cap` new tokens at most)."""
    return GenerationSettings(
        number(max_new_tokens, "max new tokens", 1, cap, whole=True),
        flag(do_sample, "do_sample"),
        number(temperature, "temperature", *TEMPERATURE_RANGE),
        number(top_p, "top_p", *TOP_P_RANGE),
        number(seed, "seed", 0, SEED_MAX, whole=True),
    )


def prior_from(helpful: Any, harmless: Any, honest: Any, blend: Any, used: bool) -> dict[str, Any]:
    """Routing fields of an axis prior from slider values (each in [0, 1]); empty when the prior is not `used`."""
    values = [number(v, f"{name} prior", 0, 1) for v, name in ((helpful, "helpful"), (harmless, "harmless"), (honest, "honest"))]
    blend = number(blend, "prior blend", 0, 1)
    if not used:
        return {}
    try:
        return {"axis_prior": validate_axis_prior(values), "prior_blend": blend}
    except ValueError as err:
        raise GenerationError(str(err)) from None


def _visitor_error(err: Exception) -> gr.Error:
    """The gr.Error a visitor sees for `err`: its own message when it is about their input, a plain
    sentence (and a logged traceback) otherwise. Messages are HTML-escaped: Gradio renders them as HTML."""
    if isinstance(err, gr.Error):
        return err
    if isinstance(err, GenerationError):
        return gr.Error(html.escape(str(err), quote=False), print_exception=False)
    if isinstance(err, torch.OutOfMemoryError):
        log.error("out of memory: %s", err)
        if torch.cuda.is_initialized():  # never initialise CUDA here (ZeroGPU: the main process has none)
            torch.cuda.empty_cache()
        return gr.Error(OUT_OF_MEMORY, print_exception=False)
    log.error("request failed", exc_info=err)
    return gr.Error(f"Something went wrong on the server while working on this request ({type(err).__name__}). "
                    "It has been logged; please try again.", print_exception=False)


def visitor_errors(fn: Callable) -> Callable:
    """Wrap an endpoint (plain or generator function) so that any exception reaches the visitor as a clear gr.Error."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                yield from fn(*args, **kwargs)
            except Exception as err:
                raise _visitor_error(err) from None

        return stream

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            raise _visitor_error(err) from None

    return call


def gpu_seconds(key: int, *_: Any, **__: Any) -> int:
    """ZeroGPU reservation of one request, in seconds: its time budget (every model endpoint stops at the
    operator's per-request limit) plus the start-up margin. Called with the decorated function's arguments."""
    return math.ceil(limits_of(key).request_seconds) + GPU_START_S


@gpu(duration=gpu_seconds)
def stream_runs(key: int, prompt: str, generation: dict[str, Any], routings: list[dict[str, Any]],
                every: float = UPDATE_EVERY_S) -> Iterator[tuple[int, dict[str, Any]]]:
    """Generate `prompt` once per routing in `routings`, one after the other, and yield (run index, growing
    trace) at most every `every` seconds per run, each run's final trace last.

    All runs share one time budget, the operator's per-request limit from now: a run that reaches it
    ends with finish_reason "time_limit" and the later ones stop at once. Closing this generator (Stop,
    or the visitor going away) ends the generation at once: the model is only held for one forward pass
    at a time. The first update of a run holds its whole prompt. A trace's notices are about that run
    only; the operator's notices about the model are in the About tab and the log.
    """
    context = served_model(key)
    deadline = request_deadline(key)
    for index, routing in enumerate(routings):
        try:  # RoutedGeneration cleans the prompt (clean_prompt) and raises ValueError for an empty one
            run = RoutedGeneration(
                context.loaded.mocae, context.loaded.tokenizer, request_text(prompt), GenerationSettings(**generation),
                RoutingSettings(**routing), deadline=deadline, max_prompt_chars=context.limits.max_prompt_chars,
                model_name=context.name,
            )
        except ValueError as err:
            raise GenerationError(str(err)) from None
        last = 0.0
        n_prompt = len(run.prompt_ids)
        for token in run:
            if token.is_prompt and token.position < n_prompt - 1:
                continue  # the prompt arrives in one forward pass: show it whole, never a part of it
            now = time.monotonic()
            if now - last >= every:
                last = now
                yield index, run.trace()
        yield index, run.trace()


def stream_trace(key: int, prompt: str, generation: dict[str, Any], routing: dict[str, Any],
                 stop: threading.Event | None = None) -> Iterator[dict[str, Any]]:
    """One run of `stream_runs`: its growing trace, the final trace last.

    Setting `stop` (the page's Stop button) ends the generation at the next update: the last trace is
    then the one the page shows, marked with finish_reason "stopped" and a notice.
    """
    runs = stream_runs(key, prompt, generation, [routing])
    for _, trace in runs:
        if stop is not None and stop.is_set() and trace["finish_reason"] is None:
            runs.close()
            n_new = sum(not t["is_prompt"] for t in trace["tokens"])
            trace["finish_reason"] = "stopped"
            trace["notices"].append(f"generation stopped with Stop after {n_new} new token(s)")
            yield trace
            return
        yield trace


def shares(trace: dict[str, Any]) -> dict[str, float]:
    """The run's weight of each axis: the trace's `run_weights` (`RoutedGeneration.run_weights`), or for a trace
    without them the mean over the generated tokens (over all tokens if none was generated)."""
    if isinstance(trace.get("run_weights"), dict):
        return trace["run_weights"]
    tokens = [t for t in trace.get("tokens", []) if not t["is_prompt"]] or trace.get("tokens", [])
    axes = trace.get("axes", [])
    return {a: (sum(t["weights"][a] for t in tokens) / len(tokens) if tokens else 0.0) for a in axes}
