"""The honest notice: one line beside every output saying what the served model is and what its text is worth.

Computed from the loaded model, never a fixed sentence: its parameter count, whether it is the bundled
teaching model, and the measured on-topic rate of its "just right" answers to the helpful prompts written
for this demo (`precomputed/answers.json`, `analysis.answers`), used only when that artefact names this
very checkpoint (its fingerprint). No notice when the model's answers are measured to be on topic at
least `ON_TOPIC_ENOUGH` of the time, or when it is unmeasured but as large as a real assistant.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from alignx_demo.analysis.artefacts import Artefacts, model_fingerprint
from alignx_demo.serving import ModelContext

BUNDLED = Path(__file__).resolve().parent.parent.parent / "assets" / "demo-model"
ON_TOPIC_ENOUGH = 0.8
"""A model whose helpful answers are on topic at least this often needs no notice."""
LARGE = 1_000_000_000
"""An unmeasured model with at least this many parameters gets no notice (a real assistant's size)."""
REMEASURE = "python -m alignx_demo precompute --only answers"


def parameter_count(model: Any) -> int:
    """Parameters of the base model as trained (a 4-bit weight counts its unpacked elements, not its bytes)."""
    total = 0
    for p in model.parameters():
        state = getattr(p, "quant_state", None)
        total += math.prod(state.shape) if state is not None else p.numel()
    return total


def on_topic_rate(answers: dict[str, Any] | None, fingerprint: str) -> tuple[float, int] | None:
    """(rate, n) of "just right" answers to helpful prompts that are on topic, from an answers artefact of this model."""
    if not answers or answers.get("model_fingerprint") != fingerprint:
        return None
    helpful = answers.get("presets", {}).get("just right", {}).get("by_axis", {}).get("helpful")
    if not helpful or not helpful.get("n"):
        return None
    return helpful["on_topic"]["rate"], helpful["n"]


def worth_line(model_dir: Path, n_params: int, measured: tuple[float, int] | None) -> str | None:
    """The notice's sentence, or None when the model does not need one."""
    bundled = model_dir.resolve() == BUNDLED.resolve()
    size = f"{n_params / 1e6:,.1f} M parameters with its experts and routers"
    what = f"the bundled teaching model ({size}, trained on 2 CPU cores)" if bundled else f"{model_dir.name} ({size})"
    if measured is not None:
        rate, n = measured
        if rate >= ON_TOPIC_ENOUGH:
            return None
        return (f"What this text is worth: this is {what}; only {rate:.0%} of its calibrated answers to {n} everyday "
                f"requests written for this demo share a word with the request (`{REMEASURE}`), so read the words as "
                "a picture of routing, not as answers.")
    if n_params >= LARGE:
        return None
    return (f"What this text is worth: this is {what}, and whether its answers stay on topic has not been measured "
            f"(`{REMEASURE}`); read the words as a picture of routing until it is.")


def served_fingerprint(context: ModelContext) -> str:
    """The served checkpoint's fingerprint ("" when none is loaded): artefacts count only when they name it."""
    return model_fingerprint(Path(context.loaded.path)) if context.loaded is not None else ""


def honest_notice(context: ModelContext, artefacts: Artefacts) -> str | None:
    """The served model's notice (None when no model is loaded or it needs none)."""
    if context.loaded is None:
        return None
    measured = on_topic_rate(artefacts.get("answers"), served_fingerprint(context))
    return worth_line(Path(context.loaded.path), parameter_count(context.loaded.mocae.model), measured)


def notice_block(line: str | None) -> str:
    """The notice as page HTML (escaped; code spans kept as <code>); empty when there is none."""
    if not line:
        return ""
    parts = html.escape(line, quote=False).split("`")
    text = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    return f'<p class="ax-worth">ⓘ {text}</p>'


def live_intro(answers: dict[str, Any] | None, fingerprint: str) -> str:
    """The Live tab's opening: what you are looking at, what to notice, and (measured) what the router does here."""
    lines = ("**What you are looking at:** type a request and press Generate — each word appears as a chip coloured by "
             "the experts that shaped it (blue Helpful, green Harmless, amber Honest; a mixed colour is a mix). "
             "**What to notice:** where the colour changes as the answer grows: the router decides again at every word.")
    if not answers or answers.get("model_fingerprint") != fingerprint:
        return lines
    everyday, harmful = _rate(answers, "just right", "helpful", "refuses"), _rate(answers, "just right", "harmless", "refuses")
    if everyday is None or harmful is None:  # an answers file without these figures: say nothing rather than guess
        return lines
    return lines + (f" **On this model:** the calibrated router refuses {everyday:.0%} of the everyday requests written "
                    f"for this demo and {harmful:.0%} of the harmful ones (Trade-off tab: what each expert does).")


def _rate(answers: dict[str, Any], preset: str, axis: str, judge: str) -> float | None:
    """The measured rate of one judge (e.g. "refuses") on one axis's prompts under one preset; None when absent."""
    cell = answers.get("presets", {}).get(preset, {}).get("by_axis", {}).get(axis, {}).get(judge)
    return cell.get("rate") if isinstance(cell, dict) else None


def experts_markdown(answers: dict[str, Any] | None, fingerprint: str) -> str:
    """What each expert does on this model, in plain words, from the measured answers of each preset (the
    artefact must name this checkpoint); a line saying it is unmeasured otherwise."""
    if not answers or answers.get("model_fingerprint") != fingerprint:
        return f"What each expert does on this model has not been measured (`{REMEASURE}`)."
    try:
        return _experts_lines(answers)
    except (KeyError, TypeError):  # a figure the file lacks (None) or a part missing: never a guessed sentence
        return f"What each expert does on this model could not be read from its answers file (`{REMEASURE}`)."


def _experts_lines(answers: dict[str, Any]) -> str:
    n = {axis: v["n"] for axis, v in answers["presets"]["just right"]["by_axis"].items()}
    everyday, harmful, myths = "helpful", "harmless", "honest"
    lines = [
        f"**What each expert does on this model**, measured on {sum(n.values())} prompts written for this demo "
        f"({n[everyday]} everyday requests, {n[harmful]} harmful ones, {n[myths]} questions about common myths):",
        f"- **Helpful alone** refuses {_rate(answers, 'too helpful', harmful, 'refuses'):.0%} of the harmful requests "
        f"and stays on topic in {_rate(answers, 'too helpful', everyday, 'on_topic'):.0%} of everyday answers.",
        f"- **Harmless alone** refuses {_rate(answers, 'too harmless', everyday, 'refuses'):.0%} of everyday requests "
        f"and {_rate(answers, 'too harmless', harmful, 'refuses'):.0%} of harmful ones.",
        f"- **Honest alone** says it is not sure (\"I'm not certain\", \"I don't know\") in "
        f"{_rate(answers, 'too honest', myths, 'hedges'):.0%} of the myth questions and "
        f"{_rate(answers, 'too honest', everyday, 'hedges'):.0%} of everyday requests"
        + (": on this model honesty is mostly hedging, not correcting the myth." if _rate(answers, 'too honest', myths, 'hedges') >= 0.5
           else "."),
        f"- **Just right** (the calibrated router) refuses {_rate(answers, 'just right', everyday, 'refuses'):.0%} of "
        f"everyday requests and {_rate(answers, 'just right', harmful, 'refuses'):.0%} of harmful ones, and hedges on "
        f"{_rate(answers, 'just right', myths, 'hedges'):.0%} of the myth questions.",
        f"<small>Greedy answers of {answers['max_new_tokens']} tokens, judged by phrase matching "
        f"(`alignx_demo/analysis/answers.py`); built by `{answers['command']}`.</small>",
    ]
    return "\n".join(lines)
