"""Research tools of the Live routing tab: where routing commits (settle curve), what each expert did
for each token (counterfactual attribution), and a saved trace loaded, shown and diffed against a new
run of its prompt.

The named endpoint `attribute` takes a trace (as `/generate` returns it) and returns (chips HTML whose
hover gives each token's weight and effect per expert, a one-sentence summary, the attribution JSON of
`analysis.attribution.attribute`). The settle curve and the diff are page events. The model work is
in the `@gpu` functions, which take and return plain data; everything else only draws their results.
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import gradio as gr

from alignx_demo.analysis.attribution import EFFECT_FLOOR, attribute
from alignx_demo.analysis.settle import settle_curve
from alignx_demo.analysis.traces import diff_traces, load_trace, validate_trace
from alignx_demo.config import AXES, RoutingSettings
from alignx_demo.ui.chips import chips_html
from alignx_demo.ui.plots import settle_figure
from alignx_demo.ui.runner import shares, stream_trace
from alignx_demo.ui.served import gpu, gpu_seconds, model_ready, served_model, token_cap
from alignx_demo.ui.theme import AXIS_LABELS
from alignx_demo.ui.validation import MODES, GenerationError, flag, number, one_of, prior_from, settings_from

DRIFT = 0.01
"""A recomputed routing weight further than this from the trace's own says the trace came from elsewhere."""


def checked_trace(trace: Any, what: str = "the trace") -> dict[str, Any]:
    """`trace` if it is a valid trace (`traces.validate_trace`); a GenerationError naming the first problems."""
    if trace is None:
        raise GenerationError(f"{what} is missing: generate a run (or load a saved trace) first")
    try:
        return validate_trace(trace)
    except ValueError as err:
        raise GenerationError(str(err)) from None


def routing_of(trace: dict[str, Any]) -> RoutingSettings:
    """The routing settings a trace was made with (only the fields `RoutingSettings` knows)."""
    known = {f.name for f in fields(RoutingSettings)}
    return RoutingSettings(**{k: v for k, v in trace["settings"]["routing"].items() if k in known})


# attribution ---------------------------------------------------------------------------------------------

LOCAL_ON_PAGE = 32
"""Runs of at most this many generated tokens get the local scope on the page too: its forward has a prefix per
token, so its cost grows with the square of the length (the CLI's `attribute --local` has no such limit)."""


@gpu(duration=gpu_seconds)
def attribute_plain(key: int, trace: dict[str, Any]) -> dict[str, Any]:
    """`analysis.attribution.attribute` of a trace on the served model (plain data in and out); the local scope
    for runs of at most `LOCAL_ON_PAGE` generated tokens."""
    context = served_model(key)
    vocabulary = context.loaded.mocae.model.get_input_embeddings().num_embeddings
    too_big = [t["id"] for t in trace["tokens"] if t["id"] >= vocabulary]
    if too_big:
        raise GenerationError(f"the trace has token id {too_big[0]}, beyond this model's vocabulary of {vocabulary}: "
                              "it was made with another model")
    try:
        generated = sum(not t["is_prompt"] for t in trace["tokens"])
        return attribute(context.loaded, None, trace, local=generated <= LOCAL_ON_PAGE)
    except ValueError as err:
        raise GenerationError(str(err)) from None


NO_TOP_EFFECT = {"no_expert_helps": f"none (no expert helps: removing one raises it or lowers it < {EFFECT_FLOOR:g})",
                 "no_effect": f"none (no removal moves it by {EFFECT_FLOOR:g} nats)"}
"""What the hover says instead of a top-effect expert, per `analysis.attribution.OUTCOMES`."""


def attribution_details(attribution: dict[str, Any]) -> dict[int, str]:
    """Hover lines per token position: each expert's weight and effect in both scopes (whole run, and local:
    at this token only), and the top-weight and top-effect experts — the local effect is the one that is
    about this token alone."""
    details = {}
    for t in attribution["tokens"]:
        local = t.get("local")
        lines = [f"  {a}: weight {t['weights'][a]:.2f} · effect " + (f"{local['effect'][a]:+.3f} here, " if local else "")
                 + f"{t['effect'][a]:+.3f} whole run" for a in attribution.get("axes", AXES)]
        tops = [f"{scope} {s['top_effect'] or NO_TOP_EFFECT[s['outcome']]}"
                for scope, s in (("here", local), ("whole run", t)) if s is not None]
        details[t["position"]] = ("counterfactual attribution (effect = how much removing the expert lowers this "
                                  "token's log-probability, in nats; here: removed at this token only; whole run: "
                                  "removed at every token):\n" + "\n".join(lines)
                                  + f"\ntop weight: {t['top_weight']} · top effect: " + " · ".join(tops))
    return details


def _agreement_line(s: dict[str, Any], what: str) -> str:
    """One sentence on how often the top-weight expert is the top-effect one, over the tokens some expert helps."""
    rate = s["top_weight_is_top_effect"]
    if rate is None:
        return (f"{what}: no expert raises the log-probability of any of the {s['tokens']} generated tokens by "
                f"{EFFECT_FLOOR:g} nats or more, so no token has a top-effect expert to compare with its "
                "top-weight one.")
    return (f"**{what}: the top-weight expert is also the top-effect expert in {rate:.0%} of the "
            f"{s['tokens_expert_helps']} generated tokens some expert helps** (of {s['tokens']}; not counted: "
            f"{s['tokens_no_expert_helps']} no expert helps, {s['tokens_no_effect']} no removal moves).")


def attribution_markdown(attribution: dict[str, Any], trace: dict[str, Any] | None = None) -> str:
    """The agreement of weight and effect with each expert removed at the token only and over the whole run,
    then the mean effects (effect = how much removing the expert lowers the token's log-probability)."""
    s = attribution["summary"]
    local = s.get("local")
    lines = [_agreement_line(local, "Removed at each token only")] if local else [
        f"Removed at each token only: not computed for runs over {LOCAL_ON_PAGE} generated tokens here (its cost grows "
        "with the square of the length); `python -m alignx_demo attribute --local` computes it."]
    lines.append(_agreement_line(s, "Removed for the whole run"))
    means = " · ".join(f"{AXIS_LABELS[a]} " + (f"{local['mean_effect'][a]:+.3f} / " if local else "") + f"{v:+.3f}"
                       for a, v in s["mean_effect"].items())
    lines.append(f"Mean effect per token, {'at the token only / ' if local else ''}whole run (nats): {means} — "
                 f"{attribution['forwards']} batched forward{'s' if attribution['forwards'] > 1 else ''}, "
                 f"{attribution['seconds']:.2f} s.")
    drift = attribution.get("trace_weights_max_abs_diff")
    if drift is not None and drift > DRIFT:
        lines.append(f"⚠ Recomputed routing differs from the trace's own weights by up to {drift:.3f}: the trace was "
                     "made with another model or other settings.")
    return "\n\n".join(lines)


def attribute_run(key: int, trace: Any) -> tuple[str, str, dict[str, Any]]:
    """(chips HTML with attribution in each generated chip's hover, summary markdown, attribution JSON)."""
    trace = checked_trace(trace)
    result = attribute_plain(key, trace)
    chips = chips_html(trace["tokens"], details=attribution_details(result))
    return chips, attribution_markdown(result, trace), result


# settle ----------------------------------------------------------------------------------------------------

@gpu(duration=gpu_seconds)
def settle_plain(key: int, prompt: str, routing: dict[str, Any]) -> dict[str, Any]:
    """`analysis.settle.settle_curve` of a prompt on the served model (plain data in and out)."""
    context = served_model(key)
    try:
        return settle_curve(context.loaded, None, prompt, routing=RoutingSettings(**routing))
    except ValueError as err:
        raise GenerationError(str(err)) from None


def _piece(text: str) -> str:
    shown = " ".join(text.split()) or text.replace("\n", "↵") or "∅"
    return html.escape(shown[:30], quote=False)


def settle_sentence(settle: dict[str, Any]) -> str:
    """Where prompt-level routing commits, to which expert, and how sure it is then and at the end."""
    s = settle["settle"]
    axis = AXIS_LABELS[s["axis"]]
    where = ("from the prompt's first token" if s["index"] == 0 else
             f"at prompt token {s['index'] + 1} of {s['tokens']} (“{_piece(s['text'])}”)")
    return (f"At prompt level, routing commits to **{axis}** {where} and never changes after: its prompt-level weight is "
            f"{s['confidence']:.2f} there and {settle['confidence']:.2f} at the end of the prompt.")


def settle_view(key: int, trace: dict[str, Any] | None) -> tuple[Any, str]:
    """The settle curve and sentence of a complete trace's prompt under its routing (empty otherwise)."""
    if not trace or trace.get("finish_reason") is None:
        return settle_figure(None), ""
    if not model_ready(key):
        return settle_figure(None), ""
    settle = settle_plain(key, trace["prompt"], routing_of(trace).to_dict())
    return settle_figure(settle), settle_sentence(settle) + levels_sentence(settle, trace)


def levels_sentence(settle: dict[str, Any], trace: dict[str, Any]) -> str:
    """Where the settle curve's expert (prompt level) differs from the run's top expert in the summary (its
    generated tokens), one sentence saying which level each is: the answer's own tokens moved the routing."""
    if not any(not t["is_prompt"] for t in trace["tokens"]):
        return ""
    share = shares(trace)
    top = max(share, key=share.get)
    if top == settle["settle"]["axis"]:
        return ""
    return (f" This is the **prompt level**; over the **generated tokens** the summary's top expert is "
            f"**{AXIS_LABELS[top]}** ({share[top]:.0%}): the answer's own tokens moved the routing away from what the prompt asked.")


# saved traces ----------------------------------------------------------------------------------------------

def load_saved(file: Any) -> tuple[dict[str, Any] | None, str]:
    """(the trace, a line describing it) from an uploaded trace file; (None, why not) for a bad file."""
    if not file:
        return None, ""
    path = Path(file if isinstance(file, str) else file.get("path", ""))
    try:
        trace = load_trace(path)
    except ValueError as err:
        return None, f"⚠ {html.escape(path.name)} cannot be used: {html.escape(str(err), quote=False)}"
    generated = sum(not t["is_prompt"] for t in trace["tokens"])
    routing = trace["settings"]["routing"]
    how = ("calibrated" if routing["calibrated"] else "uncalibrated") + f", {routing['mode']}"
    return trace, (f"Loaded **{html.escape(path.name)}**: “{html.escape(trace['prompt'][:120], quote=False)}” — "
                   f"{generated} generated + {len(trace['tokens']) - generated} prompt tokens, {how}, from "
                   f"{html.escape(trace['model'] or 'an unnamed model', quote=False)}.")


def rerun_settings(key: int, trace: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The generation and routing settings of a saved trace, checked as if they came through the API."""
    generation = trace["settings"].get("generation") or {}
    routing = trace["settings"]["routing"]
    try:
        settings = settings_from(generation.get("max_new_tokens", 64), generation.get("do_sample", False),
                                 generation.get("temperature", 1.0), generation.get("top_p", 1.0), generation.get("seed", 0),
                                 token_cap(key))
    except GenerationError as err:
        raise GenerationError(f"the saved trace's generation settings cannot be run here: {err}") from None
    out = {"mode": one_of(routing["mode"], "routing mode", MODES), "calibrated": flag(routing["calibrated"], "calibrated")}
    prior = routing.get("axis_prior")
    if prior:
        blend = number(routing.get("prior_blend", 1.0), "prior blend", 0, 1)
        out |= prior_from(*prior, blend, True)
    return settings.to_dict(), out


def diff_markdown(diff: dict[str, Any]) -> str:
    s = diff["summary"]
    div = diff["first_divergence"]
    if div is None:
        aligned = f"all {diff['aligned']} tokens are the same"
    else:
        said = [f"“{_piece(side['text'])}”" if side else "nothing" for side in (div["a"], div["b"])]
        aligned = (f"the first {diff['aligned']} tokens are the same, then the texts part at token {div['index']} "
                   f"({said[0]} in the saved trace, {said[1]} now)")
    lines = [f"Ran the saved prompt again with its own settings: {aligned}. **The routed (top) expert differs at "
             f"{s['n_routed_differs']} of the {diff['aligned']} aligned tokens** (outlined; the hover names the saved "
             f"trace's expert); the largest weight difference is {s['max_abs_delta'] or 0:.3f}."]
    if diff["settings_changed"]:
        lines.append("Differs from the saved trace: " + "; ".join(
            f"{html.escape(k)}: {html.escape(str(a)[:60])} → {html.escape(str(b)[:60])}" for k, (a, b) in diff["settings_changed"].items()))
    return "\n\n".join(lines)


def rerun_and_diff(key: int, saved: dict[str, Any] | None) -> Iterator[tuple[str, str, Any]]:
    """Run a saved trace's prompt again with its settings; stream the new chips, then the diff (chips with the
    tokens whose routed expert changed outlined, a summary, the diff JSON)."""
    saved = checked_trace(saved, "the saved trace")
    generation, routing = rerun_settings(key, saved)
    new = None
    for new in stream_trace(key, saved["prompt"], generation, routing):
        yield chips_html(new["tokens"]), "*Running the saved prompt again…*", gr.skip()
    diff = diff_traces(saved, new)
    marks = {row["position"]: row["top_a"] for row in diff["tokens"] if row["routed_differs"]}
    yield chips_html(new["tokens"], flips=marks, other="the saved trace"), diff_markdown(diff), diff | {"new_trace": new}
