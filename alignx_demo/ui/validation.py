"""What a request may carry, and what a visitor sees when it fails.

The named endpoints take their inputs unprocessed (`preprocess=False`) and check them here, in one
place: a prompt must be text, numbers must be finite numbers in the widget's range (whole where a
count is meant), flags true or false, choices one of the listed ones; anything else is rejected with
a sentence saying what is wrong (nothing is clamped, except an over-long prompt, which is cut with a
notice). `visitor_errors` turns every failure of an endpoint, expected or not, into a `gr.Error`
with such a sentence, so a caller never sees a traceback and the server keeps serving.
"""

from __future__ import annotations

import functools
import html
import inspect
import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr
import torch

from alignx_demo.config import GenerationSettings, validate_axis_prior
from alignx_demo.generation import clean_prompt
from alignx_demo.serving import MAX_REQUEST_CHARS, Limits

log = logging.getLogger(__name__)

TEMPERATURE_RANGE = (0.1, 2.0)
TOP_P_RANGE = (0.05, 1.0)
SEED_MAX = 2**32 - 1
MODES = ("soft", "top1")
OUT_OF_MEMORY = ("The server ran out of memory while working on this request. Try a shorter prompt or fewer new "
                 "tokens; the app itself is still running.")


class GenerationError(ValueError):
    """A visitor-facing problem (bad setting, no model): the message is shown as it is."""


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
