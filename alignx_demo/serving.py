"""What the app serves: the loaded model (or a clear account of why none could be loaded) and the
limits under which it serves it.

Model locations and limits come only from the operator (command line or environment), never from a
page or an API call.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Mapping
import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path

from alignx_demo.generation import MAX_PROMPT_CHARS, context_length
from alignx_demo.modeling.checkpoint import CheckpointError, LoadedModel, load_mocae
from alignx_demo.modeling.families import UnsupportedModelError
from alignx_demo.quiet import KERNELS_WARNING, quiet_libraries  # noqa: F401  (KERNELS_WARNING: re-exported)

log = logging.getLogger(__name__)

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "assets" / "demo-model"
HOW_TO_GET_ONE = (
    "Train the bundled demo model with `python -m alignx_demo train all --data-dir ../shared/data "
    "--out assets/demo-model`, or start the app with `--model DIR` (or ALIGNX_MODEL=DIR) pointing to a "
    "MoCaE checkpoint folder."
)

MAX_REQUEST_CHARS = 20_000
"""A request whose prompt is longer than this is refused outright; shorter ones are cut to `Limits.max_prompt_chars`."""


@dataclass(frozen=True)
class Limits:
    """How much work the app accepts, so one visitor or script cannot starve the others.

    Attributes:
        queue_size: requests that may wait in Gradio's queue; more are refused with "queue is full".
        concurrency: requests that use the model at the same time (one queue group for all model work).
        request_seconds: wall-clock seconds one request may generate for; then it stops with
            finish_reason "time_limit" and a notice (a comparison or the presets share one budget).
        max_new_tokens: highest max_new_tokens of /generate; /compare, /tradeoff and /presets allow
            half of it (/compare and /presets run several generations per request).
        max_prompt_chars: longer prompts are cut to their last this many characters, with a notice.
        max_analysis_rows: prompts one /analyze request routes at most (the first ones of the file, with
            a notice); it also stops at `request_seconds`.
    """

    queue_size: int = 32
    concurrency: int = 2
    request_seconds: float = 120.0
    max_new_tokens: int = 256
    max_prompt_chars: int = MAX_PROMPT_CHARS
    max_analysis_rows: int = 500

    def __post_init__(self) -> None:
        for name, low, high in (("queue_size", 1, 10_000), ("concurrency", 1, 64), ("request_seconds", 0.1, 86_400),
                                ("max_new_tokens", 2, 2048), ("max_prompt_chars", 1, MAX_REQUEST_CHARS),
                                ("max_analysis_rows", 1, 100_000)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise ValueError(f"{name} (--{name.replace('_', '-')}, {LIMIT_VARIABLES[name]}) must be a number "
                                 f"from {low:g} to {high:g}, got {value!r}")

    @property
    def half_max_new_tokens(self) -> int:
        """The max_new_tokens cap of /compare, /tradeoff and /presets."""
        return self.max_new_tokens // 2

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Limits:
        """Limits from ALIGNX_QUEUE_SIZE, ALIGNX_CONCURRENCY, ALIGNX_REQUEST_SECONDS, ALIGNX_MAX_NEW_TOKENS,
        ALIGNX_MAX_PROMPT_CHARS, ALIGNX_MAX_ANALYSIS_ROWS; unset ones keep their defaults."""
        values: dict[str, int | float] = {}
        for f in fields(cls):
            variable = LIMIT_VARIABLES[f.name]
            raw = env.get(variable, "").strip()
            if not raw:
                continue
            convert = float if f.name == "request_seconds" else int
            try:
                values[f.name] = convert(raw)
            except ValueError:
                raise ValueError(f"{variable} must be {'a number' if convert is float else 'a whole number'}, got {raw!r}") from None
        return cls(**values)


LIMIT_VARIABLES = {
    "queue_size": "ALIGNX_QUEUE_SIZE",
    "concurrency": "ALIGNX_CONCURRENCY",
    "request_seconds": "ALIGNX_REQUEST_SECONDS",
    "max_new_tokens": "ALIGNX_MAX_NEW_TOKENS",
    "max_prompt_chars": "ALIGNX_MAX_PROMPT_CHARS",
    "max_analysis_rows": "ALIGNX_MAX_ANALYSIS_ROWS",
}
LIMIT_HELP = {
    "queue_size": "requests that may wait in the queue",
    "concurrency": "requests that use the model at once",
    "request_seconds": "seconds of generation per request",
    "max_new_tokens": "highest max_new_tokens of /generate (the other endpoints: half)",
    "max_prompt_chars": "longer prompts are cut to their last this many characters",
    "max_analysis_rows": "prompts one /analyze request routes at most",
}


@dataclass
class ServerOptions:
    """Operator settings; each has an environment variable so a Space can set it."""

    model: Path = DEFAULT_MODEL
    base_model: str | None = None
    load_in_4bit: bool = True
    trust_remote_code: bool = False
    host: str = "127.0.0.1"
    port: int = 7860
    compare_model: Path | None = None
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def from_env(cls) -> ServerOptions:
        env = os.environ
        host = env.get("ALIGNX_HOST") or ("0.0.0.0" if env.get("SPACE_ID") else None)
        return cls(
            model=Path(env.get("ALIGNX_MODEL", str(DEFAULT_MODEL))),
            base_model=env.get("ALIGNX_BASE_MODEL") or None,
            load_in_4bit=env.get("ALIGNX_NO_4BIT", "") not in ("1", "true", "yes"),
            trust_remote_code=env.get("ALIGNX_TRUST_REMOTE_CODE", "") in ("1", "true", "yes"),
            host=host or env.get("GRADIO_SERVER_NAME") or "127.0.0.1",
            port=int(env.get("ALIGNX_PORT") or env.get("GRADIO_SERVER_PORT") or 7860),
            compare_model=Path(env["ALIGNX_COMPARE_MODEL"]) if env.get("ALIGNX_COMPARE_MODEL") else None,
            limits=Limits.from_env(env),
        )


@dataclass
class ModelContext:
    """The model the app serves (None when loading failed) or why none could be loaded, the loader's notices
    for the operator (how the model was loaded; shown in the About tab, never per run), and the limits."""

    loaded: LoadedModel | None
    problem: str | None = None
    notices: list[str] = field(default_factory=list)
    limits: Limits = field(default_factory=Limits)

    @property
    def name(self) -> str:
        return self.loaded.description if self.loaded else "no model loaded"

    def new_token_cap(self, several: bool = False) -> int:
        """Highest max_new_tokens a request may ask for: the operator's limit (half of it for endpoints
        that run `several` generations per request), and never more than the served model's context
        allows (generation keeps half the context for the prompt, see `RoutedGeneration`)."""
        cap = self.limits.half_max_new_tokens if several else self.limits.max_new_tokens
        if self.loaded is None:
            return cap
        return max(1, min(cap, context_length(self.loaded.mocae.model) // 2))


def port_problem(host: str, port: int) -> str | None:
    """None when the app can listen on host:port; else one sentence saying why not — checked before the model
    loads, so a taken port costs no loading time and ends in no traceback. The probe binds as Gradio's own check
    and uvicorn do (SO_REUSEADDR: a port left in TIME_WAIT by an earlier run counts as free)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        return f"The port must be a whole number from 1 to 65535 (--port, ALIGNX_PORT), got {port!r}."
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as err:
        return f"Cannot listen on {host}:{port}: the host is not known here ({getattr(err, 'strerror', None) or err})."
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return (f"Port {port} on {host} is already in use (another app or an earlier run of this one): stop it, "
                        "or start the app with --port N (or ALIGNX_PORT=N) on a free port.")
            return f"Cannot listen on {host}:{port}: {err.strerror or err}."
    return None


def quiet_bitsandbytes() -> None:
    """`quiet.quiet_libraries`, under its older name (bitsandbytes' `kernels` warning among the lines it condenses)."""
    quiet_libraries()


def load_context(options: ServerOptions) -> ModelContext:
    """Load the operator's model; on any failure keep serving (the precomputed tabs) and say what is
    wrong and what to do: a broken checkpoint must never keep the app from starting. The loader's
    notices (how the model was loaded) are for the operator: logged here once, shown in the About tab."""
    if not options.model.exists() and options.model == DEFAULT_MODEL:
        return ModelContext(None, f"The bundled demo model is not at {options.model}. {HOW_TO_GET_ONE}", limits=options.limits)
    quiet_bitsandbytes()
    try:
        loaded = load_mocae(
            options.model,
            load_in_4bit=options.load_in_4bit,
            trust_remote_code=options.trust_remote_code,
            base_model=options.base_model,
        )
    except (CheckpointError, UnsupportedModelError, ValueError) as err:
        log.error("model not loaded: %s", err)
        problem = str(err)
    except Exception as err:  # a third-party loader failing in an unforeseen way: still start, and say what happened
        log.exception("model not loaded")
        problem = f"{type(err).__name__}: {err}"
    else:
        for notice in loaded.notices:
            log.info("model notice: %s", notice)
        return ModelContext(loaded, None, list(loaded.notices), options.limits)
    return ModelContext(None, f"The model could not be loaded: {problem.rstrip('.')}. {HOW_TO_GET_ONE}", limits=options.limits)



def load_comparison(options: ServerOptions) -> ModelContext | None:
    """The operator's second model, which the Routing analysis tab compares the served one with; None when
    none is configured. Visitors never name a model: only the operator's flag or variable does."""
    return None if options.compare_model is None else load_context(dataclasses.replace(options, model=options.compare_model))
