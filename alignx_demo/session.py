"""A Python session (a notebook): load a model once, then generate, analyze, compare, attribute, settle and
diff on it — what the command line does, without reloading the model for every call.

    from alignx_demo import Session

    s = Session("assets/demo-model")                   # loads once (the bundled model: about 15–25 s on a CPU)
    trace = s.generate("Is it safe to eat raw cookie dough?", max_new_tokens=32)
    report = s.analyze("prompts.csv")                  # a CSV/JSONL file, or a list of rows or prompt strings
    effects = s.attribute(trace)                       # or a prompt: generated greedily first
    curve = s.settle("How do I pick a lock?")
    diff = s.diff(trace, s.generate(trace["prompt"], max_new_tokens=32, calibrated=False))
    change = s.compare(Session("runs/retrained"), "prompts.csv")   # two models on one prompt set

Every call returns plain JSON-able data (the same as the command's JSON file). The commands `generate`,
`analyze` (and `analyze --against`), `attribute` and `settle` are thin wrappers of these methods; `diff`
needs no model (`analysis.traces.diff_traces`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignx_demo.config import AXES
from alignx_demo.quiet import quiet_libraries

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "assets" / "demo-model"
Progress = Callable[[int, int], Any]


def _trace(value: Any) -> dict[str, Any]:
    """A validated trace from a trace dict, a path or JSON text (`analysis.traces.load_trace`)."""
    from alignx_demo.analysis.traces import load_trace, validate_trace

    return validate_trace(value) if isinstance(value, dict) else load_trace(value)


def routing_settings(calibrated: bool = True, top1: bool = False, axis_prior: Any = None, prior_blend: float = 1.0) -> Any:
    """`config.RoutingSettings` from the session's keyword arguments."""
    from alignx_demo.config import RoutingSettings

    return RoutingSettings(mode="top1" if top1 else "soft", calibrated=calibrated, axis_prior=axis_prior,
                           prior_blend=prior_blend)


def run_settings(*, max_new_tokens: int = 64, calibrated: bool = True, top1: bool = False, axis_prior: Any = None,
                 prior_blend: float = 1.0, sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                 seed: int = 0) -> tuple[Any, Any]:
    """(`config.GenerationSettings`, `config.RoutingSettings`) of `Session.generate`'s keyword arguments; a
    ValueError names a bad one (the command line calls it before loading the model)."""
    from alignx_demo.config import GenerationSettings

    generation = GenerationSettings(max_new_tokens=max_new_tokens, do_sample=sample, temperature=temperature,
                                    top_p=top_p, seed=seed)
    return generation, routing_settings(calibrated, top1, axis_prior, prior_blend)


@dataclass
class PromptSet:
    """Rows to analyse, the sentences of the rows rejected while reading them, and the file's name (None for rows
    given in Python)."""

    rows: list[Any]
    rejected: list[str] = field(default_factory=list)
    name: str | None = None


def read_prompts(prompts: str | Path | Sequence[Any] | PromptSet, axes: Sequence[str] = AXES) -> PromptSet:
    """The rows of a prompt file (a path: `parse_prompt_file`, labels among the model's `axes`, bad rows named in
    `rejected`), or rows given as a list (dicts with "prompt", optional "axis" and extra columns, or prompt
    strings; checked by `analyze_prompts`). Read once, a `PromptSet` can be analysed by several models."""
    if isinstance(prompts, PromptSet):
        return prompts
    if isinstance(prompts, (str, Path)):
        from alignx_demo.analysis.prompt_files import parse_prompt_file

        rows, problems = parse_prompt_file(Path(prompts), axes=axes)
        return PromptSet(rows, problems, str(prompts))
    return PromptSet(list(prompts))


class Session:
    """One loaded MoCaE model and the research calls on it. `Session(model_dir, ...)` loads with
    `modeling.load_mocae` (4-bit NF4 by default; `load_in_4bit=False` for full precision); `Session.of(loaded)`
    wraps a `LoadedModel` already in memory. `threads` sets torch's CPU threads for the process."""

    def __init__(self, model: str | Path = DEFAULT_MODEL, *, load_in_4bit: bool = True, base_model: str | None = None,
                 trust_remote_code: bool = False, threads: int | None = None, device: str | None = None,
                 loaded: Any = None) -> None:
        quiet_libraries()
        if threads is not None:
            import torch

            if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
                raise ValueError(f"threads must be a whole number of at least 1, got {threads!r}")
            torch.set_num_threads(threads)
        if loaded is None:
            from alignx_demo.modeling import load_mocae

            loaded = load_mocae(model, load_in_4bit=load_in_4bit, device=device, trust_remote_code=trust_remote_code,
                                base_model=base_model)
        self.loaded = loaded

    @classmethod
    def of(cls, loaded: Any) -> Session:
        """A session on a `LoadedModel` already loaded (no second load)."""
        return cls(loaded=loaded)

    @property
    def name(self) -> str:
        """The model in words: folder, family, layers, precision."""
        return self.loaded.description

    @property
    def axes(self) -> tuple[str, ...]:
        """The model's axes (its experts' names), the keys of every weights object it returns."""
        return self.loaded.mocae.axes

    @property
    def notices(self) -> list[str]:
        """How the model was loaded (e.g. full precision where 4-bit cannot run), one sentence each."""
        return list(self.loaded.notices)

    def __repr__(self) -> str:
        return f"Session({self.name})"

    # the calls ----------------------------------------------------------------------------------------

    def generate(self, prompt: str, *, max_new_tokens: int = 64, calibrated: bool = True, top1: bool = False,
                 axis_prior: Any = None, prior_blend: float = 1.0, sample: bool = False, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int = 0, on_token: Callable[[Any], Any] | None = None) -> dict[str, Any]:
        """A routed generation's trace (`generation.RoutedGeneration.trace()`; the format of docs/traces.md):
        greedy unless `sample`; `on_token(token)` is called with each `TokenTrace` as it arrives (prompt tokens
        first), e.g. to print the text as it streams."""
        from alignx_demo.generation import RoutedGeneration

        generation, routing = run_settings(max_new_tokens=max_new_tokens, calibrated=calibrated, top1=top1,
                                           axis_prior=axis_prior, prior_blend=prior_blend, sample=sample,
                                           temperature=temperature, top_p=top_p, seed=seed)
        run = RoutedGeneration(self.loaded.mocae, self.loaded.tokenizer, prompt, generation, routing, model_name=self.name)
        for token in run:
            if on_token is not None:
                on_token(token)
        return run.trace()

    def analyze(self, prompts: str | Path | Sequence[Any] | PromptSet, *, generate_tokens: int | None = None,
                calibrated: bool = True, batch_size: int = 16, max_rows: int | None = None,
                max_seconds: float | None = None, cross: Any = None, progress: Progress | None = None) -> dict[str, Any]:
        """Route a prompt set and say where routing fails, at prompt and generation level
        (`analysis.failures.analyze_prompts`). `prompts`: a CSV/JSONL file (bad rows are named in "problems" and
        counted), a list of rows or prompt strings, or a `PromptSet`. `generate_tokens` defaults to
        `analysis.failures.DEFAULT_GENERATE_TOKENS` (0: prompt level only); `cross`: the cross-slices, as
        `analysis.failures.summarise_level` takes them; `progress(done, total)` after each batch."""
        from alignx_demo.analysis.failures import DEFAULT_GENERATE_TOKENS, analyze_prompts

        prompts = read_prompts(prompts, self.axes)
        result = analyze_prompts(self.loaded, None, prompts.rows, rejected=prompts.rejected,
                                 generate_tokens=DEFAULT_GENERATE_TOKENS if generate_tokens is None else generate_tokens,
                                 routing=routing_settings(calibrated), batch_size=batch_size, max_rows=max_rows,
                                 max_seconds=max_seconds, cross=cross, progress=progress)
        if prompts.name is not None:
            result["prompts_file"] = prompts.name
        return result

    def compare(self, other: Session, prompts: str | Path | Sequence[Any] | PromptSet, *,
                progress: Callable[[str], Progress | None] | None = None, **settings: Any) -> dict[str, Any]:
        """This model (A) against `other` (B) on one prompt set, with the same settings (`analyze`'s keyword
        arguments): `analysis.failures.compare_models` of the two analyses — per prompt the routed axis A → B,
        confidence and correctness of each; per level McNemar's exact test, the accuracy difference B − A with
        Newcombe's paired interval and ECE(B) − ECE(A) with a paired bootstrap — with both analyses in full under
        "analyses". `progress(side)`, side "a" or "b", may return the progress callback of that side's analysis."""
        from alignx_demo.analysis.failures import compare_models

        if other.axes != self.axes:
            raise ValueError(f"the models route over different axes ({', '.join(self.axes)} and {', '.join(other.axes)}), "
                             "so their routing cannot be compared")
        prompts = read_prompts(prompts, self.axes)
        results = {side: session.analyze(prompts, progress=progress(side) if progress else None, **settings)
                   for side, session in (("a", self), ("b", other))}
        comparison = compare_models(results["a"], results["b"])
        if prompts.name is not None:
            comparison["prompts_file"] = prompts.name
        comparison["analyses"] = results
        return comparison

    def attribute(self, trace_or_prompt: Any, *, max_new_tokens: int = 32, calibrated: bool = True) -> dict[str, Any]:
        """What each expert did for each generated token (`analysis.attribution.attribute`), with the trace under
        "trace". A trace (a dict, or a `Path` to a saved one) is attributed under its own routing settings; a
        prompt (a string) is first generated greedily (`max_new_tokens`, `calibrated`)."""
        from alignx_demo.analysis.attribution import attribute

        if isinstance(trace_or_prompt, str):
            routing = routing_settings(calibrated)
            trace = self.generate(trace_or_prompt, max_new_tokens=max_new_tokens, calibrated=calibrated)
        else:
            routing, trace = None, _trace(trace_or_prompt)
        result = attribute(self.loaded, None, trace, routing=routing)
        result["trace"] = trace
        return result

    def settle(self, prompt: str, *, calibrated: bool = True) -> dict[str, Any]:
        """The prompt-level routing of every prefix and where it settles (`analysis.settle.settle_curve`)."""
        from alignx_demo.analysis.settle import settle_curve

        return settle_curve(self.loaded, None, prompt, routing=routing_settings(calibrated))

    @staticmethod
    def diff(a: Any, b: Any) -> dict[str, Any]:
        """Two traces (dicts, paths or JSON text) aligned token by token, every divergent stretch reported
        (`analysis.traces.diff_traces`); needs no model."""
        from alignx_demo.analysis.traces import diff_traces

        return diff_traces(_trace(a), _trace(b))


def load(model: str | Path = DEFAULT_MODEL, **options: Any) -> Session:
    """`Session(model, **options)`: load a model once for a Python session."""
    return Session(model, **options)
