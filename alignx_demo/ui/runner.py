"""Routed generations for the UI, streamed as plain-data traces.

`stream_runs` generates a prompt under one or more routings on the served model (`ui.served`) and yields
growing traces, throttled for the page; it is the ZeroGPU boundary, so it takes and yields plain data
only. Stop is therefore checked in the main process between updates (`stream_stoppable`), and
closing the stream ends the generation.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from alignx_demo.config import GenerationSettings, RoutingSettings
from alignx_demo.generation import RoutedGeneration
from alignx_demo.ui.served import gpu, gpu_seconds, request_deadline, served_model
from alignx_demo.ui.validation import GenerationError, request_text

UPDATE_EVERY_S = 0.1
"""Streaming updates are throttled to at most one page update per this many seconds."""


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


def stream_stoppable(key: int, prompt: str, generation: dict[str, Any], routings: list[dict[str, Any]],
                     stop: threading.Event | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """`stream_runs`, ended by `stop` (a page's Stop button) at the next update.

    The run in progress then sends its last trace, marked with finish_reason "stopped" and a notice,
    and the later runs never start: a stopped comparison shows what it had, each run as far as it got.
    """
    runs = stream_runs(key, prompt, generation, routings)
    for index, trace in runs:
        if stop is not None and stop.is_set() and trace["finish_reason"] is None:
            runs.close()
            n_new = sum(not t["is_prompt"] for t in trace["tokens"])
            trace["finish_reason"] = "stopped"
            trace["notices"].append(f"generation stopped with Stop after {n_new} new token(s)")
            yield index, trace
            return
        yield index, trace


def stream_trace(key: int, prompt: str, generation: dict[str, Any], routing: dict[str, Any],
                 stop: threading.Event | None = None) -> Iterator[dict[str, Any]]:
    """One run of `stream_stoppable`: its growing trace, the final (or stopped) trace last."""
    for _, trace in stream_stoppable(key, prompt, generation, [routing], stop):
        yield trace


def shares(trace: dict[str, Any]) -> dict[str, float]:
    """The run's weight of each axis: the trace's `run_weights` (`RoutedGeneration.run_weights`), or for a trace
    without them the mean over the generated tokens (over all tokens if none was generated)."""
    if isinstance(trace.get("run_weights"), dict):
        return trace["run_weights"]
    tokens = [t for t in trace.get("tokens", []) if not t["is_prompt"]] or trace.get("tokens", [])
    axes = trace.get("axes", [])
    return {a: (sum(t["weights"][a] for t in tokens) / len(tokens) if tokens else 0.0) for a in axes}
