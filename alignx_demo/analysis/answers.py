"""What the served model's answers are worth, measured on prompts written for this project.

For each trade-off preset (three forced experts and "just right", the calibrated router) the model
answers every map prompt (`analysis.map_prompts`: 40 per axis, written for this demo, never trained
on) greedily, and each answer is judged by the string detectors of `data.behaviour`:

- **on topic**: the answer shares a content word with the prompt (crude and blind to meaning on
  purpose; it is the measure the base comparison uses),
- **refuses**: a refusal phrase in its first 200 characters,
- **hedges**: an "I don't know" phrase in its first 200 characters.

Rates carry Wilson 95 % intervals. The page's honest notice and its plain-words sentences about what
each expert does read this artefact (`precomputed/answers.json`), never a fixed sentence.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from alignx_demo.analysis.map_prompts import map_prompts
from alignx_demo.analysis.statistics import wilson_interval
from alignx_demo.config import AXES, PRESETS, GenerationSettings, RoutingSettings, preset_routing
from alignx_demo.data.behaviour import is_hedge, is_refusal, on_topic

JUDGES: dict[str, Callable[[str, str], bool]] = {
    "on_topic": on_topic,
    "refuses": lambda _prompt, answer: is_refusal(answer),
    "hedges": lambda _prompt, answer: is_hedge(answer),
}
"""Each judgement of an answer, from (prompt, answer)."""


def generate_answers(loaded: Any, prompts: list[str], routing: dict[str, Any], max_new_tokens: int) -> list[str]:
    """The greedy answer to each prompt under `routing` (its generated text only)."""
    from alignx_demo.generation import RoutedGeneration

    answers = []
    for prompt in prompts:
        run = RoutedGeneration(loaded.mocae, loaded.tokenizer, prompt, GenerationSettings(max_new_tokens=max_new_tokens),
                               RoutingSettings(**routing), model_name=loaded.description)
        for _ in run:
            pass
        answers.append(run.trace()["text"])
    return answers


def judged(prompts: list[str], answers: list[str]) -> dict[str, Any]:
    """Count, rate and Wilson interval of each judgement over (prompt, answer) pairs."""
    out: dict[str, Any] = {"n": len(prompts)}
    for name, judge in JUDGES.items():
        hits = sum(judge(p, a) for p, a in zip(prompts, answers))
        out[name] = {"count": hits, "rate": round(hits / len(prompts), 4) if prompts else None,
                     "interval": wilson_interval(hits, len(prompts))}
    return out


def answer_quality(loaded: Any, per_axis: int | None = None, max_new_tokens: int = 24,
                   progress: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Per preset and prompt axis, how often the answers are on topic, refuse and hedge; every answer kept."""
    pairs = map_prompts(per_axis)
    presets: dict[str, Any] = {}
    for name in PRESETS:
        if progress:
            progress(f"answers: {name}")
        answers = generate_answers(loaded, [p for _, p in pairs], preset_routing(name), max_new_tokens)
        presets[name] = {
            "routing": preset_routing(name),
            "by_axis": {axis: judged([p for (a, p) in pairs if a == axis], [t for (a, _), t in zip(pairs, answers) if a == axis])
                        for axis in AXES},
            "answers": answers,
        }
    return {"prompts": [{"axis": a, "prompt": p} for a, p in pairs], "max_new_tokens": max_new_tokens,
            "decoding": "greedy", "judges": {"on_topic": "shares a content word with the prompt (data.behaviour.on_topic)",
                                             "refuses": "a refusal phrase in the first 200 characters",
                                             "hedges": "an I-don't-know phrase in the first 200 characters"},
            "presets": presets}
