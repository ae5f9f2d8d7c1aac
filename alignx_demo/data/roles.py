"""What each trained part of the teaching model learns from: the data roles.

The bundled demo model is a *teaching model* (docs/design.md section 5): its three experts must behave
distinctly and legibly, so a visitor can see which one shapes a token and what a trade-off preset
does. The roles, each built from the train split (or any split, for evaluation of the same
behaviour):

- base: a neutral general assistant — the helpful axis's general instruction/answer text, minus
  the few answers that refuse or hedge (`behaviour`), whole answers (cutting them to 192 tokens
  left too little unique text: the base overfit it; see `training.base`).
- helpful expert: the same general answers (no refusals, no hedges), within 128 tokens.
- harmless expert: harmful requests whose reference answer refuses (safety-tuned-llamas and the
  HH-RLHF answers our refusal detector flags), cut to the first sentences within 48 tokens: a
  short safe refusal.
- honest expert: TruthfulQA questions with a truthful answer that starts by saying it is unsure
  ("I don't know for sure. No, cracking your knuckles does not cause arthritis."), within 64
  tokens; answers that already decline ("I have no comment.") stay as they are. A 6.9 M model
  cannot know the answers to unseen misconception questions, so the honest behaviour it can show
  is to flag its uncertainty and then give the correction it learned; this is the one place the
  project edits reference text, and the model card says so.

Routers (Stage 2) learn from the three expert roles mixed (the LM and routing losses), plus every
other train-split prompt of each axis as a prompt without an answer (`router_examples`: the routing
loss on the prompt only). The expert roles alone leave out the harmful requests whose reference
does not refuse — more than half of the harmless axis, most of its HH-RLHF red-team prompts, which
the routing evaluation does ask about — so the routers never learned to send them to Harmless.
With `match_phrasing`, prompts whose opening another axis owns are repeated so that style alone no
longer names the axis (`PHRASINGS`, `phrasing_repeats`): measured on the train split, "How can I…"
opens 14 % of the harmless prompts and 4 % of the helpful ones, so a benign "How can I…" request
routed to Harmless and was refused; each helpful one is repeated 3 times. Imperative tasks open
19 % of helpful and 15 % of harmless prompts: close enough that they are not repeated. The
joint-SFT baseline learns from the naive mix of raw references, where it shows "too harmless"
honestly.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from alignx_demo.config import AXES
from alignx_demo.data import behaviour
from alignx_demo.data.records import AxisExample, eval_prompts, normalize_key, stable_rank

BASE_ANSWER_TOKENS: int | None = None
"""Answer cap of the base's text (None: whole answers)."""
EXPERT_ANSWER_TOKENS = {"helpful": 128, "harmless": 48, "honest": 64}
HONEST_OPENINGS = ("I don't know for sure.", "I'm not certain.", "I do not know for certain.")
"""Uncertainty markers the honest expert's answers start with (each one `behaviour.is_hedge`)."""

_SENTENCE_END = re.compile(r"[.!?](?=\s)|[.!?]$|\n")


def shorten_answer(tokenizer: Any, text: str, max_tokens: int | None) -> str:
    """`text` cut to its whole sentences within `max_tokens` tokens (hard cut if the first sentence is longer)."""
    if max_tokens is None:
        return text
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text
    head = tokenizer.decode(ids[:max_tokens])
    ends = [m.end() for m in _SENTENCE_END.finditer(head)]
    return head[: ends[-1]].rstrip() if ends else head.rstrip()


def _plain_answer(e: AxisExample) -> bool:
    return not (behaviour.is_refusal(e.response) or behaviour.is_hedge(e.response))


def base_examples(tokenizer: Any, examples: list[AxisExample], axes: tuple[str, ...] = ("helpful",),
                  max_tokens: int | None = BASE_ANSWER_TOKENS, drop_refusals: bool = True) -> list[AxisExample]:
    """The base's train-split examples: the given axes, no refusals or hedges, short answers."""
    return [
        dataclasses.replace(e, response=shorten_answer(tokenizer, e.response, max_tokens))
        for e in examples
        if e.split == "train" and e.axis in axes and e.response and (not drop_refusals or _plain_answer(e))
    ]


def _honest_response(e: AxisExample) -> str:
    if behaviour.is_hedge(e.response):
        return e.response
    opening = HONEST_OPENINGS[stable_rank(e.id) % len(HONEST_OPENINGS)]
    answer = e.response.strip()
    return f"{opening} {answer}" + ("" if answer.endswith((".", "!", "?")) else ".")


def expert_examples(tokenizer: Any, examples: list[AxisExample], axis: str, split: str = "train") -> list[AxisExample]:
    """The examples expert `axis` learns from (see the module docstring), from one split."""
    rows = [e for e in examples if e.axis == axis and e.split == split and e.response]
    if axis == "helpful":
        rows = [e for e in rows if _plain_answer(e)]
    elif axis == "harmless":
        rows = [e for e in rows if behaviour.is_refusal(e.response)]
    elif axis == "honest":
        rows = [dataclasses.replace(e, response=_honest_response(e)) for e in rows]
    else:
        raise ValueError(f"unknown axis {axis!r}")
    limit = EXPERT_ANSWER_TOKENS[axis]
    return [dataclasses.replace(e, response=shorten_answer(tokenizer, e.response, limit)) for e in rows]


def router_examples(tokenizer: Any, examples: list[AxisExample], axis: str, split: str = "train",
                    match_phrasing: bool = False, mismatch: float = 0.0) -> list[AxisExample]:
    """What the routers learn axis `axis` from: the expert's role, then each other distinct prompt of
    the axis in `split` with an empty response (encoded as the prompt alone: routing loss only).
    With `match_phrasing`, the prompts whose phrasing another axis owns are repeated
    (`phrasing_repeats`), so that phrasing alone no longer tells the axes apart. With `mismatch` > 0,
    that share of the role's examples is added again with another axis's answer (`mismatched`)."""
    role = expert_examples(tokenizer, examples, axis, split)
    seen = {normalize_key(e.prompt) for e in role}
    rows = role + [dataclasses.replace(e, response="") for e in eval_prompts(examples, axis, split=split)
                   if normalize_key(e.prompt) not in seen]
    if mismatch > 0:
        others = {a: expert_examples(tokenizer, examples, a, split) for a in AXES if a != axis}
        rows += mismatched(role, others, mismatch)
    if not match_phrasing:
        return rows
    repeats = phrasing_repeats(examples, split)
    return [e for e in rows for _ in range(repeats.get((axis, phrasing(e.prompt)), 1))]


def mismatched(role: list[AxisExample], others: dict[str, list[AxisExample]], share: float) -> list[AxisExample]:
    """A `share` of the role's prompts (fixed hash order), each with the answer of another axis's example
    (the other axes in turn), labelled with the prompt's axis and marked `meta["mismatched"]`: the router
    learns to keep routing by what the prompt asked while the text reads like another axis — a refusal
    after a benign request, an answer after a harmful one — so a wrong first token cannot lock a run into
    the wrong expert. The text is routed, never learned (`batches.EncodedSet.teach`)."""
    chosen = sorted(role, key=lambda e: stable_rank(e.id))[: int(round(share * len(role)))]
    pools = [sorted(rows, key=lambda e: stable_rank(e.id)) for _, rows in sorted(others.items()) if rows]
    if not pools:
        return []
    rows = []
    for i, example in enumerate(chosen):
        pool = pools[i % len(pools)]
        answer = pool[(i // len(pools)) % len(pool)].response
        rows.append(dataclasses.replace(example, id=f"{example.id}:mismatched", response=answer,
                                        meta={**example.meta, "mismatched": True}))
    return rows


PHRASINGS: dict[str, re.Pattern[str]] = {
    "how_to": re.compile(
        r"^\W*(how (can|do|should|would|could) (i|you|we|one)|what('s| is| are) (the )?(best|easiest|quickest|fastest|"
        r"safest|simplest|good) ways? to|is it (ok|okay|possible|safe|legal) to|can you (help|tell|show) me|"
        r"i (want|need|would like) to|help me|what should i)\b", re.IGNORECASE),
    "task": re.compile(
        r"^\W*(write|create|generate|give|list|explain|describe|develop|design|compose|draft|provide|outline|produce|"
        r"summari[sz]e|make)\b", re.IGNORECASE),
    "question": re.compile(
        r"^\W*(is|are|was|were|do|does|did|can|could|should|would|will|why|what|who|where|when|which|how)\b[^\n]*\?\s*$",
        re.IGNORECASE),
}
"""Openings that tell the axes apart by style, not meaning: red-team requests open with "How can I…"
("how_to": 14 % of the harmless train prompts, 4 % of the helpful ones), ordinary tasks with an
imperative ("task": 19 % of helpful, 15 % of harmless), and a plain question is honest's form
("question": 82 % of honest, 15 % of harmless, 25 % of helpful — so harmful questions from held-out
sources, BeaverTails' "Is it okay to…?", were routed honest). The first pattern that matches names it."""


def phrasing(prompt: str) -> str | None:
    """The prompt's phrasing class (`PHRASINGS`), or None."""
    return next((name for name, pattern in PHRASINGS.items() if pattern.match(prompt)), None)


def phrasing_repeats(examples: list[AxisExample], split: str = "train", cap: int = 4) -> dict[tuple[str, str], int]:
    """{(axis, phrasing): times each such prompt is repeated}: a phrasing's share of an axis's distinct
    prompts is raised toward its largest share in any axis (at most `cap` times), so the router cannot
    use the opening as a proxy for the axis: benign "How can I…" requests (helpful) and harmful requests
    phrased as tasks (harmless) are the prompts it must learn by meaning."""
    shares: dict[tuple[str, str], float] = {}
    for axis in ("helpful", "harmless", "honest"):
        prompts = [e.prompt for e in eval_prompts(examples, axis, split=split)]
        for name in PHRASINGS:
            shares[(axis, name)] = sum(phrasing(p) == name for p in prompts) / max(len(prompts), 1)
    repeats = {}
    for name in PHRASINGS:
        top = max(shares[(a, n)] for a, n in shares if n == name)
        for axis in ("helpful", "harmless"):
            share = shares[(axis, name)]
            if share > 0:
                repeats[(axis, name)] = max(1, min(cap, round(top / share)))
    return repeats
