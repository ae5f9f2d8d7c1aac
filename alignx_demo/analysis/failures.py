"""Routing failures across a whole prompt set: where the router sends each prompt, how often it is
right, how sure it is when it is wrong, and on which slices it fails.

Each prompt is routed in left-padded batches with attention masks (the routers' causal running mean
leaves padding out, so a batched prompt routes exactly as it does alone) and greedy tokens are
generated in the same batch. Two levels, both by default, each against the row's axis label:
- **prompt**: the prompt-level weights of `analysis.settle` (mean over the tokens after the template
  prefix and over layers; pooled by the calibration stack's run-level part when calibrated);
- **generation** (`generate_tokens`, default `DEFAULT_GENERATE_TOKENS`; 0 skips it): the mean over
  the generated tokens (up to and including an end-of-sequence token) of the weights each carries
  (the trace convention), pooled the same way — what the page's summaries show.
Per level: a confusion matrix true × routed; per slice — all, true axis, each extra column of the
file with few distinct values (e.g. `source`), and `prompt_changed` when any prompt was changed —
n, accuracy (Wilson interval), ECE and debiased ECE (BCa bootstrap intervals) and mean confidence
(`analysis.statistics`, the project's one definition of each); cross-slices of two columns (by
default the true axis × each other slice column, and each extra column × `prompt_changed`); the
reliability bins of the ECE; and the misrouted rows, most confident first. Per prompt also the
settle point (`analysis.settle.settle_point`), and per axis the mean settle index.

Nothing is hidden: every row of the input is counted — `rows_given` = analysed + rejected (each
named in `problems`) + not analysed (a row or time limit, named in `stopped`) — and a prompt the
analysis changed (cut from the left to the model's context, losing its beginning; cut to
`MAX_PROMPT_CHARS` characters; cleaned of control or invalid characters) is listed in the row's
`changes`, counted in `prompt_changes` and a top-level notice, flagged in the CSV's `prompt_changed`
column, and forms its own slice.

**Two models on one prompt set** (`compare_models(result_a, result_b)`, from two `analyze_prompts` results of
the same rows and settings; `analyze --model A --against B`): per prompt and level the paired change
(routed axis A → B, confidence A and B, correct A and B), and per level McNemar's exact test of per-prompt
correctness, the accuracy difference B − A with Newcombe's paired interval and ECE(B) − ECE(A) (and the
debiased ECE's) with a paired bootstrap over prompts (`analysis.statistics`).
"""

from __future__ import annotations

import copy
import csv
import io
import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from alignx_demo.analysis import statistics
from alignx_demo.analysis.prompt_files import make_row
from alignx_demo.analysis.common import (
    RoutedPrompt, encode_routed_prompt, layer_mean_weights, pooler, routing_description, unwrap,
)
from alignx_demo.analysis.settle import cumulative_weights, settle_point
from alignx_demo.analysis.traces import settings_changed
from alignx_demo.config import AXES, RoutingSettings
from alignx_demo.data.templates import encode_prompt, template_prefix_length
from alignx_demo.generation import MAX_PROMPT_CHARS, context_length, input_device

ANALYSIS_SCHEMA = "alignx-routing-analysis/2"
DEFAULT_GENERATE_TOKENS = 16
"""Greedy tokens generated per prompt for the generation level unless told otherwise (0 skips it)."""
MAX_SLICE_VALUES = 20
"""An extra column becomes a slice when it has at most this many distinct values (and some repeat)."""
CHANGED = "prompt_changed"
"""The slice (and CSV column) of prompts the analysis changed: "none" or their `CHANGES`, joined by "+"."""
CHANGES = {
    "cut_to_context": "cut from the left to fit the model's context, losing its beginning (where an instruction usually is)",
    "cut_to_length": f"cut to its last {MAX_PROMPT_CHARS} characters, losing its beginning",
    "cleaned": "cleaned of control characters or invalid characters",
}
LEVELS = {
    "prompt": "prompt level (the mean routing weights over the prompt's tokens)",
    "generation": "generation level (the mean routing weights over the generated tokens; what the page's summaries show)",
}
DEFINITIONS = {
    "prompt": "mean of the routing weights over the prompt's tokens after the template prefix and over layers "
              "(pooled by the run-level calibrator when calibrated); routed = argmax, confidence = max",
    "generation": "mean over the generated tokens (greedy, up to and including end-of-sequence; generate_tokens of them "
                  f"at most, default {DEFAULT_GENERATE_TOKENS}) of the weights each carries (the routing of the forward "
                  "that produced it), pooled the same way",
    **statistics.DEFINITIONS,
    "cross": "the rows sharing a value of each of two columns, summarised like a slice",
    "reliability": "the ECE's bins over a level's labelled rows: count, mean confidence and accuracy per bin",
    CHANGED: "how the analysis changed the prompt before routing it: none, or "
             + "; ".join(f"{k} = {v}" for k, v in CHANGES.items()),
    "settle": "settle index: the first token (counted after the template prefix, from 0) from which the routed axis "
              "of the prompt-level weights of the prefix never changes again",
}
Progress = Callable[[int, int], Any]


# routing a batch --------------------------------------------------------------------------------------

def _pad_id(tokenizer: Any) -> int:
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if value is not None:
            return int(value[0] if isinstance(value, list) else value)
    return 0


def _eos_ids(mocae: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for value in (tokenizer.eos_token_id, getattr(mocae.model.generation_config, "eos_token_id", None)):
        if value is not None:
            ids.update(value if isinstance(value, (list, tuple)) else [value])
    return ids


@torch.no_grad()
def route_batch(mocae: Any, tokenizer: Any, prompts: list[RoutedPrompt], routing: RoutingSettings,
                generate_tokens: int = 0) -> list[dict[str, Any]]:
    """Route prompts in one left-padded batch (and greedily generate `generate_tokens` tokens).

    Per prompt: {"tokens": (N, K) layer-mean weights of its tokens after the template prefix,
    "generated": (G, K) weights carried by its generated tokens or None, "generated_ids": [...]}.
    """
    device = input_device(mocae.model)
    pad = _pad_id(tokenizer)
    width = max(len(p.ids) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p.ids):] = torch.tensor(p.ids)
        mask[row, width - len(p.ids):] = 1
    ids, mask = ids.to(device), mask.to(device)
    eos = _eos_ids(mocae, tokenizer)
    with mocae.lock, mocae.routed(routing), mocae.record() as record:
        if generate_tokens:
            out = mocae.generate(input_ids=ids, attention_mask=mask, max_new_tokens=generate_tokens, do_sample=False,
                                 pad_token_id=pad, eos_token_id=sorted(eos) or None)
            new = out[:, width:].cpu()
        else:
            mocae(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0))
    forwards = [layer_mean_weights(record, f) for f in range(len(record.weights[0]))]
    prefill = forwards[0]  # (B, width, K)
    # generated token j carries the routing of forward j (the prefill's last position for j = 0)
    carried = torch.cat([prefill[:, -1:], *(f[:, -1:] for f in forwards[1:])], dim=1) if generate_tokens else None
    results = []
    for row, p in enumerate(prompts):
        result = {"tokens": prefill[row, width - len(p.ids) + p.start :], "generated": None, "generated_ids": []}
        if generate_tokens:
            gen_ids = new[row].tolist()[: carried.shape[1]]
            end = next((j + 1 for j, t in enumerate(gen_ids) if t in eos), len(gen_ids))
            result.update(generated=carried[row, :end], generated_ids=gen_ids[:end])
        results.append(result)
    return results


# one row ------------------------------------------------------------------------------------------------

def _level(weights: torch.Tensor, axis: str | None, axes: Sequence[str]) -> dict[str, Any]:
    routed = axes[int(weights.argmax())]
    return {"weights": {a: round(float(weights[k]), 6) for k, a in enumerate(axes)}, "routed": routed,
            "confidence": round(float(weights.max()), 6), "correct": None if axis is None else routed == axis}


def cut_to_context(tokenizer: Any, prompt: RoutedPrompt, keep: int) -> bool:
    """Whether `encode_routed_prompt` cut this prompt from the left (it keeps at most `keep` tokens)."""
    return len(prompt.ids) >= keep and len(encode_prompt(tokenizer, prompt.prompt)) > len(prompt.ids)


def changed_value(changes: Sequence[str]) -> str:
    """The `prompt_changed` value of a row: "none", or its changes in `CHANGES` order joined by "+"."""
    return "+".join(c for c in CHANGES if c in changes) or "none"


def _analyse_row(index: int, row: dict[str, Any], prompt: RoutedPrompt, routed: dict[str, Any], pool: Any,
                 tokenizer: Any, cut: bool, axes: tuple[str, ...]) -> dict[str, Any]:
    curve = cumulative_weights(routed["tokens"], pool)
    settle = settle_point(curve, axes)
    settle["position"] = prompt.start + settle["index"]
    changes = [c for c in CHANGES if c in (row.get("changes") or []) or (c == "cut_to_context" and cut)]
    out = {"index": index, "row": row["row"], "prompt": prompt.prompt, "axis": row["axis"], "extra": row["extra"],
           "notices": row["notices"] + prompt.notices, "changes": changes, "tokens": int(curve.shape[0]),
           **_level(curve[-1], row["axis"], axes), "settle": settle}
    if routed["generated"] is not None and len(routed["generated"]):
        mean = routed["generated"].mean(0, keepdim=True)
        gen = _level((pool(mean) if pool is not None else mean)[0], row["axis"], axes)
        text = tokenizer.decode(routed["generated_ids"], skip_special_tokens=True)
        out["generation"] = {"text": text, "tokens": len(routed["generated_ids"]), **gen}
    return out


# summaries ----------------------------------------------------------------------------------------------

def column_value(row: dict[str, Any], column: str) -> str | None:
    """A row's value in a slice column: "axis", `CHANGED`, or an extra column of the file."""
    if column == "axis":
        return row["axis"]
    if column == CHANGED:
        return changed_value(row.get("changes") or [])
    value = row["extra"].get(column)
    return None if value in (None, "") else value


def slice_columns(rows: list[dict[str, Any]]) -> list[str]:
    """The columns a level is sliced by: "axis", each extra column with few distinct values (some
    repeating), and `CHANGED` when any row was changed."""
    keep = ["axis"]
    for column in sorted({k for r in rows for k in r["extra"]} - {"axis", CHANGED}):
        values = [v for v in (column_value(r, column) for r in rows) if v is not None]
        distinct = len(set(values))
        if values and distinct <= MAX_SLICE_VALUES and distinct < len(values):
            keep.append(column)
    if any(r.get("changes") for r in rows):
        keep.append(CHANGED)
    return keep


def _cross_pairs(columns: list[str], cross: Sequence[tuple[str, str]] | str | None) -> list[tuple[str, str]]:
    if cross == "all":
        return list(itertools.combinations(columns, 2))
    if cross is None:  # the true axis × each other column; each extra column × how prompts were changed
        extra = [c for c in columns if c not in ("axis", CHANGED)]
        return [("axis", c) for c in columns if c != "axis"] + ([(c, CHANGED) for c in extra] if CHANGED in columns else [])
    return [tuple(pair) for pair in cross]  # type: ignore[misc]


def _level_rows(rows: list[dict[str, Any]], level: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    get = (lambda r: r) if level == "prompt" else (lambda r: r.get("generation"))
    return [(r, get(r)) for r in rows if r["axis"] is not None and get(r) is not None]


def summarise_level(rows: list[dict[str, Any]], level: str, cross: Sequence[tuple[str, str]] | str | None = None,
                    intervals: bool = True, axes: Sequence[str] = AXES) -> dict[str, Any]:
    """Confusion matrix (over the model's `axes`), slices and cross-slices (`analysis.statistics.calibration_summary` each),
    reliability bins and the misrouted rows of one level. `cross`: pairs of columns to cross, "all"
    pairs of slice columns, or None for the true axis × each other slice column and, when prompts were
    changed, each extra column × `prompt_changed` (e.g. whether one source's figures rest on cut prompts)."""
    labelled = _level_rows(rows, level)
    matrix = [[0] * len(axes) for _ in axes]
    for r, x in labelled:
        matrix[axes.index(r["axis"])][axes.index(x["routed"])] += 1
    conf = [x["confidence"] for _, x in labelled]
    correct = [bool(x["correct"]) for _, x in labelled]
    slices: dict[str, dict[str, Any]] = {}
    crosses: dict[str, dict[str, Any]] = {}
    reliability: list[dict[str, Any]] = []
    if labelled:
        slices["all"] = {"all": statistics.calibration_summary(conf, correct, intervals=intervals)}
        columns = slice_columns([r for r, _ in labelled])
        for column in columns:
            slices[column] = statistics.slice_table([column_value(r, column) for r, _ in labelled], conf, correct,
                                                    intervals=intervals)
        for a, b in _cross_pairs(columns, cross):
            cells = statistics.cross_table([column_value(r, a) for r, _ in labelled], [column_value(r, b) for r, _ in labelled],
                                           conf, correct, intervals=intervals)
            crosses[f"{a} × {b}"] = {"columns": [a, b], "cells": cells}
        reliability = statistics.reliability_bins(conf, correct)
    wrong = sorted((p for p in labelled if not p[1]["correct"]), key=lambda p: -p[1]["confidence"])
    misrouted = [{"index": r["index"], "row": r["row"], "prompt": r["prompt"], "axis": r["axis"], "routed": x["routed"],
                  "confidence": x["confidence"], "weights": x["weights"], "extra": r["extra"], "changes": r.get("changes", [])}
                 for r, x in wrong]
    return {"level": level, "what": LEVELS[level], "labelled": len(labelled),
            "confusion": {"true": list(axes), "routed": list(axes), "matrix": matrix},
            "slices": slices, "cross": crosses, "reliability": reliability, "misrouted": misrouted}


def summarise_settle(rows: list[dict[str, Any]], axes: Sequence[str] = AXES) -> dict[str, Any]:
    """Mean settle index, fraction of the prompt and prompt length: over all rows and per true axis (of `axes`)."""
    def mean_of(group: list[dict[str, Any]]) -> dict[str, Any]:
        n = len(group)
        return {"n": n, "mean_index": round(sum(r["settle"]["index"] for r in group) / n, 4),
                "mean_fraction": round(sum(r["settle"]["fraction"] for r in group) / n, 4),
                "mean_tokens": round(sum(r["tokens"] for r in group) / n, 4)}

    out = {a: mean_of([r for r in rows if r["axis"] == a]) for a in axes if any(r["axis"] == a for r in rows)}
    if rows:
        out["all"] = mean_of(rows)
    return out


def _change_notices(counts: dict[str, int], analysed: int, context: int, generate_tokens: int) -> list[str]:
    room = f", {generate_tokens} of them left for the generated tokens" if generate_tokens else ""
    what = {"cut_to_context": f"cut from the left to fit the model's context ({context} tokens{room}), losing their "
                              "beginning — where an instruction usually is",
            "cut_to_length": f"cut to their last {MAX_PROMPT_CHARS} characters, losing their beginning",
            "cleaned": "cleaned of control characters or invalid characters"}
    return [f"{n} of {analysed} analysed prompts were {what[c]}: they are flagged in the CSV column {CHANGED} and form the "
            f"slice {CHANGED} = {c}" for c, n in counts.items() if c in CHANGES and n]


# the analysis -------------------------------------------------------------------------------------------

def _coerce(rows: Sequence[Any], axes: Sequence[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows as `make_row` rows labelled with the model's `axes`, and a sentence for each left out."""
    good, problems = [], []
    for i, row in enumerate(rows, start=1):
        if isinstance(row, dict) and {"row", "prompt", "axis", "extra", "notices"} <= set(row):
            if row["axis"] is None or row["axis"] in axes:
                good.append(row)
            else:
                problems.append(f"Row {row['row']}: axis {row['axis']!r} is not one of {', '.join(axes)} (or empty); left out.")
            continue
        try:
            good.append(make_row(row, i, axes=axes))
        except ValueError as err:
            problems.append(f"Row {i}: {err}; left out.")
    return good, problems


def analyze_prompts(
    loaded_or_mocae: Any, tokenizer: Any, rows: Sequence[Any], *, generate_tokens: int = DEFAULT_GENERATE_TOKENS,
    batch_size: int = 16, max_rows: int | None = None, max_seconds: float | None = None,
    routing: RoutingSettings | None = None, progress: Progress | None = None, model_name: str | None = None,
    rejected: Sequence[str] = (), cross: Sequence[tuple[str, str]] | str | None = None,
) -> dict[str, Any]:
    """Route every prompt of a set and say where routing fails, at prompt and generation level. See
    the module docstring for the levels.

    `rows`: the rows of `parse_prompt_file`, or dicts with "prompt" (and "axis", extra columns), or
    prompt strings; bad ones are left out with a sentence in "problems". `rejected`: the sentences of
    rows left out before this call (`parse_prompt_file`'s problems, one per row): they count in
    "rows_given" and "rejected" and lead "problems". Rows are analysed in their order, `batch_size` at
    a time, until `max_rows` rows or `max_seconds` (checked before each batch, with the last batch's
    time as the estimate of the next; the first batch always runs) — "stopped" says which limit ended
    it. `generate_tokens` greedy tokens per prompt give the generation level (0: prompt level only).
    `cross`: the cross-slices (`summarise_level`). `progress(done, total)` is called after each batch.
    Soft calibrated routing unless `routing` says otherwise.

    Returns plain JSON-able data:

        {"schema": "alignx-routing-analysis/2", "model", "axes", "routing": {…, "calibration"},
         "generate_tokens", "batch_size", "definitions": {…},
         "rows_given", "rejected", "usable", "analysed", "not_analysed",   # rows_given = rejected + usable
         "stopped": None | "max_rows" | "max_seconds",                      # usable = analysed + not_analysed
         "prompt_changes": {"changed", "cut_to_context", "cut_to_length", "cleaned"},   # over analysed rows
         "notices": [sentence…], "problems": [sentence…], "summary": [sentence…], "seconds",
         "rows": [{"index", "row", "prompt", "axis", "extra", "notices", "changes": [change…], "tokens",
                   "weights": {axis: w}, "routed", "confidence", "correct": bool | None,
                   "settle": {"index", "position", "axis", "confidence", "tokens", "fraction"},
                   "generation": {"text", "tokens", "weights", "routed", "confidence", "correct"}}],  # with generate_tokens
         "levels": {"prompt": {"level", "what", "labelled", "confusion": {"true", "routed", "matrix"},
                               "slices": {"all": {"all": S}, "axis": {axis: S}, column: {value: S}},
                               "cross": {"a × b": {"columns": [a, b], "cells": {value of a: {value of b: S}}}},
                               "reliability": [{"bin_lower", "bin_upper", "count", "confidence", "accuracy"}],
                               "misrouted": [{"index", "row", "prompt", "axis", "routed", "confidence", "weights",
                                              "extra", "changes"}]},
                    "generation": {…}},                                                               # with generate_tokens
         "settle": {axis: {"n", "mean_index", "mean_fraction", "mean_tokens"}, "all": {…}}}

    where S = `analysis.statistics.calibration_summary`: {"n", "correct", "accuracy", "accuracy_ci95",
    "ece", "ece_ci95", "ece_debiased", "ece_debiased_ci95", "mean_confidence", "ci_methods"}.
    """
    started = time.monotonic()
    mocae, tokenizer, name = unwrap(loaded_or_mocae, tokenizer)
    routing = routing or RoutingSettings(mode="soft", calibrated=True)
    context = context_length(mocae.model)
    _check_analysis_options(generate_tokens, batch_size, max_rows, context)
    good, bad = _coerce(rows, mocae.axes)
    problems = [*rejected, *bad]
    given = len(rows) + len(rejected)
    notices: list[str] = []
    todo, stopped = good, None
    if max_rows is not None and len(good) > max_rows:
        todo, stopped = good[:max_rows], "max_rows"
        notices.append(f"only the first {max_rows} of {len(good)} rows were analysed (row limit)")
    analysed, timed_out = _route_rows(mocae, tokenizer, todo, routing, generate_tokens=generate_tokens, batch_size=batch_size,
                                      max_seconds=max_seconds, started=started, progress=progress)
    if timed_out:
        stopped = "max_seconds"
        notices.append(f"stopped at the time limit ({max_seconds:g} s): {len(analysed)} of {len(good)} rows analysed")
    if problems:
        notices.append(f"{len(problems)} of {given} rows were rejected, each named in problems")
    changes = {"changed": sum(bool(r["changes"]) for r in analysed),
               **{c: sum(c in r["changes"] for r in analysed) for c in CHANGES}}
    notices += _change_notices(changes, len(analysed), context, generate_tokens)
    levels = {"prompt": summarise_level(analysed, "prompt", cross, axes=mocae.axes)}
    if generate_tokens:
        levels["generation"] = summarise_level(analysed, "generation", cross, axes=mocae.axes)
    result = {
        "schema": ANALYSIS_SCHEMA, "model": model_name if model_name is not None else name, "axes": list(mocae.axes),
        "routing": routing_description(mocae, routing), "generate_tokens": generate_tokens, "batch_size": batch_size,
        "definitions": DEFINITIONS, "rows_given": given, "rejected": len(problems), "usable": len(good),
        "analysed": len(analysed), "not_analysed": len(good) - len(analysed), "stopped": stopped,
        "prompt_changes": changes, "notices": notices, "problems": problems, "summary": [],
        "seconds": 0.0, "rows": analysed, "levels": levels, "settle": summarise_settle(analysed, mocae.axes),
    }
    result["seconds"] = round(time.monotonic() - started, 3)
    result["summary"] = summary_lines(result)
    return result


def _check_analysis_options(generate_tokens: Any, batch_size: Any, max_rows: int | None, context: int) -> None:
    """One-sentence errors for settings the API or CLI may send out of range."""
    if isinstance(generate_tokens, bool) or not isinstance(generate_tokens, int) or not 0 <= generate_tokens <= context // 2:
        raise ValueError(f"generate_tokens must be an integer from 0 to {context // 2}, got {generate_tokens!r}")
    if not isinstance(batch_size, int) or not 1 <= batch_size <= 512:
        raise ValueError(f"batch_size must be an integer from 1 to 512, got {batch_size!r}")
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")


def _route_rows(mocae: Any, tokenizer: Any, todo: list[dict[str, Any]], routing: RoutingSettings, *, generate_tokens: int,
                batch_size: int, max_seconds: float | None, started: float,
                progress: Progress | None) -> tuple[list[dict[str, Any]], bool]:
    """Route the rows batch by batch until done or, before a batch that would pass `max_seconds`
    (the last batch's time estimates the next; the first always runs), stop: (rows, timed out)."""
    context = context_length(mocae.model)
    pool = pooler(mocae, routing)
    skip = template_prefix_length(tokenizer)
    keep = max(1, context - generate_tokens)
    analysed: list[dict[str, Any]] = []
    last_batch = 0.0
    for start in range(0, len(todo), batch_size):
        if start and max_seconds is not None and time.monotonic() - started + last_batch > max_seconds:
            return analysed, True
        batch_started = time.monotonic()
        batch = todo[start : start + batch_size]
        prompts = [encode_routed_prompt(tokenizer, r["prompt"], context=context, room=generate_tokens, skip=skip) for r in batch]
        routed = route_batch(mocae, tokenizer, prompts, routing, generate_tokens)
        for offset, (row, prompt, result) in enumerate(zip(batch, prompts, routed)):
            analysed.append(_analyse_row(start + offset, row, prompt, result, pool, tokenizer,
                                         cut_to_context(tokenizer, prompt, keep), mocae.axes))
        last_batch = time.monotonic() - batch_started
        if progress is not None:
            progress(len(analysed), len(todo))
    return analysed, False


REDACTED = ("Each prompt is shown by its data id, not its text: the benchmark text is not shipped with the app "
            "(the ids name rows of the data files in `../shared/data`)")
"""Why a shipped analysis of benchmark prompts shows ids (`redact_prompts`)."""


def redact_prompts(result: dict[str, Any], column: str = "id") -> dict[str, Any]:
    """The analysis with every prompt replaced by its row's `column` value (a data id), for shipping an analysis of
    prompts whose text may not be copied; "prompts_redacted" says so, and such a slice cannot be rerun."""
    out = copy.deepcopy(result)
    for row in [*out["rows"], *(r for level in out["levels"].values() for r in level["misrouted"])]:
        row["prompt"] = str(row["extra"][column])
    out["prompts_redacted"] = REDACTED
    return out


# two models on the same prompts ---------------------------------------------------------------------------

COMPARISON_SCHEMA = "alignx-routing-comparison/1"
COMPARISON_DEFINITIONS = {
    "pairing": "the rows of the same prompt file analysed by both models, matched by row number (and checked to "
               "hold the same prompt and axis label); A is the first analysis, B the second",
    "change": "per labelled prompt and level: both correct, both wrong, became correct (wrong by A, right by B) or "
              "became wrong (right by A, wrong by B)",
    **statistics.PAIRED_DEFINITIONS,
    "ece_debiased_difference": "debiased ECE(B) − debiased ECE(A), with the same paired bootstrap",
}
CHANGE_WORDS = {(True, True): "both correct", (False, False): "both wrong", (False, True): "became correct",
                (True, False): "became wrong"}


def _level_of(row: dict[str, Any], level: str) -> dict[str, Any] | None:
    return row if level == "prompt" else row.get("generation")


def _pair_rows(result_a: dict[str, Any], result_b: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    by_row = {r["row"]: r for r in result_b["rows"]}
    pairs = []
    for ra in result_a["rows"]:
        rb = by_row.get(ra["row"])
        if rb is None:
            continue
        if ra["prompt"] != rb["prompt"] or ra["axis"] != rb["axis"]:
            raise ValueError(f"the two analyses are not of the same prompts: row {ra['row']} is {ra['prompt'][:40]!r} "
                             f"({ra['axis']}) in A and {rb['prompt'][:40]!r} ({rb['axis']}) in B")
        pairs.append((ra, rb))
    return pairs


def _paired_row(ra: dict[str, Any], rb: dict[str, Any], levels: list[str]) -> dict[str, Any]:
    out = {"index": ra["index"], "row": ra["row"], "prompt": ra["prompt"], "axis": ra["axis"], "extra": ra["extra"],
           "levels": {}}
    for level in levels:
        xa, xb = _level_of(ra, level), _level_of(rb, level)
        if xa is None or xb is None:
            continue
        labelled = ra["axis"] is not None
        out["levels"][level] = {
            "routed_a": xa["routed"], "routed_b": xb["routed"], "routed_changed": xa["routed"] != xb["routed"],
            "confidence_a": xa["confidence"], "confidence_b": xb["confidence"],
            "confidence_change": round(xb["confidence"] - xa["confidence"], 6),
            "correct_a": xa["correct"], "correct_b": xb["correct"],
            "change": CHANGE_WORDS[(bool(xa["correct"]), bool(xb["correct"]))] if labelled else None}
    return out


def compare_level(rows: list[dict[str, Any]], level: str) -> dict[str, Any]:
    """The paired figures of one level over `compare_models`' paired rows: A's and B's calibration summaries on
    the same labelled prompts, McNemar's exact test, the accuracy and ECE differences (B − A) with paired
    intervals, the routed-axis changes A → B and the mean confidence change."""
    cells = [r["levels"][level] for r in rows if level in r["levels"]]
    labelled = [r["levels"][level] for r in rows if level in r["levels"] and r["axis"] is not None]
    conf_a = [c["confidence_a"] for c in labelled]
    conf_b = [c["confidence_b"] for c in labelled]
    right_a = [bool(c["correct_a"]) for c in labelled]
    right_b = [bool(c["correct_b"]) for c in labelled]
    transitions: dict[str, int] = {}
    for c in cells:
        if c["routed_changed"]:
            key = f"{c['routed_a']} → {c['routed_b']}"
            transitions[key] = transitions.get(key, 0) + 1
    differences = {f"{name}_difference": statistics.paired_difference(statistics.ece_statistic(estimator),
                                                                       (conf_a, right_a), (conf_b, right_b))
                   for name, estimator in (("ece", statistics.ece), ("ece_debiased", statistics.ece_debiased))}
    return {
        "level": level, "what": LEVELS[level], "paired": len(cells), "labelled": len(labelled),
        "a": statistics.calibration_summary(conf_a, right_a), "b": statistics.calibration_summary(conf_b, right_b),
        "mcnemar": statistics.mcnemar_exact(right_a, right_b),
        "accuracy_difference": statistics.paired_accuracy_difference(right_a, right_b), **differences,
        "changes": {word: sum(c["change"] == word for c in labelled) for word in CHANGE_WORDS.values()},
        "routed_changed": sum(c["routed_changed"] for c in cells), "transitions": dict(sorted(transitions.items())),
        "mean_confidence_change": round(sum(c["confidence_change"] for c in cells) / len(cells), 6) if cells else None,
    }


def compare_models(result_a: dict[str, Any], result_b: dict[str, Any]) -> dict[str, Any]:
    """Compare two `analyze_prompts` results of the same prompt file (e.g. a router before and after
    retraining): the rows both analysed, paired by row number, at each level both measured.

    Returns plain JSON-able data:

        {"schema": "alignx-routing-comparison/1", "a": {"model", "routing", "analysed"}, "b": {…},
         "definitions": {…}, "paired", "only_a", "only_b",                 # rows analysed by both / by one only
         "settings_changed": {path: [a, b]}, "notices": [sentence…], "summary": [sentence…],
         "rows": [{"index", "row", "prompt", "axis", "extra",
                   "levels": {level: {"routed_a", "routed_b", "routed_changed", "confidence_a", "confidence_b",
                                      "confidence_change", "correct_a", "correct_b", "change"}}}],
         "levels": {level: {"level", "what", "paired", "labelled", "a": S, "b": S,       # S: calibration_summary
                            "mcnemar": {"n", "b", "c", "discordant", "p_value", "method"},
                            "accuracy_difference": D, "ece_difference": D, "ece_debiased_difference": D,
                            "changes": {"both correct", "both wrong", "became correct", "became wrong"},
                            "routed_changed", "transitions": {"a → b": n}, "mean_confidence_change"}}}

    where D = {"value": B − A, "ci95", "ci_method", "n"}. McNemar's b counts prompts right by A and wrong by B
    ("became wrong"), c the reverse. A ValueError when a row number holds different prompts in the two results.
    """
    pairs = _pair_rows(result_a, result_b)
    levels = [level for level in LEVELS if level in result_a["levels"] and level in result_b["levels"]]
    rows = [_paired_row(ra, rb, levels) for ra, rb in pairs]
    a_rows, b_rows = {r["row"] for r in result_a["rows"]}, {r["row"] for r in result_b["rows"]}
    changed = settings_changed(*({"routing": r.get("routing"), "generate_tokens": r.get("generate_tokens")}
                                 for r in (result_a, result_b)))
    notices = []
    if len(a_rows - b_rows) or len(b_rows - a_rows):
        notices.append(f"{len(a_rows - b_rows)} rows were analysed by A only and {len(b_rows - a_rows)} by B only "
                       "(a row or time limit): only the rows both analysed are compared")
    if changed:
        notices.append("the two analyses differ in their settings, not only in the model: "
                       + "; ".join(f"{k}: {a} → {b}" for k, (a, b) in changed.items()))
    missing = [level for level in LEVELS if level in result_a["levels"] or level in result_b["levels"]]
    for level in missing:
        if level not in levels:
            notices.append(f"the {level} level was measured by one analysis only: it is not compared")
    out = {"schema": COMPARISON_SCHEMA,
           **{side: {"model": r.get("model"), "routing": r.get("routing"), "analysed": r.get("analysed", len(r["rows"]))}
              for side, r in (("a", result_a), ("b", result_b))},
           "definitions": COMPARISON_DEFINITIONS, "paired": len(pairs), "only_a": len(a_rows - b_rows),
           "only_b": len(b_rows - a_rows), "settings_changed": changed, "notices": notices, "summary": [],
           "rows": rows, "levels": {level: compare_level(rows, level) for level in levels}}
    out["summary"] = comparison_lines(out)
    return out


def difference_text(d: dict[str, Any]) -> str:
    """A paired difference (B − A) with its 95 % interval, as the CLI and the page print it."""
    return "n/a" if d.get("value") is None else f"{d['value']:+.3f}{_ci(d.get('ci95'))}"


def comparison_lines(comparison: dict[str, Any]) -> list[str]:
    """Plain sentences about a `compare_models` result, each naming its level."""
    a, b = comparison["a"]["model"] or "A", comparison["b"]["model"] or "B"
    lines = [f"A = {a}, B = {b}: {comparison['paired']} prompts analysed by both"]
    for level, s in comparison["levels"].items():
        what = s["what"][:1].upper() + s["what"][1:]
        if not s["labelled"]:
            lines.append(f"{what}: no labelled prompts; the routed axis changed on {s['routed_changed']} of {s['paired']}")
            continue
        m = s["mcnemar"]
        acc_a, acc_b = s["a"]["accuracy"], s["b"]["accuracy"]
        lines.append(f"{what}, on {s['labelled']} labelled prompts: accuracy {acc_a:.3f} → {acc_b:.3f} (B − A "
                     f"{difference_text(s['accuracy_difference'])}; {m['c']} became correct, {m['b']} became wrong, McNemar "
                     f"exact p = {m['p_value']:.4g}); ECE {s['a']['ece']:.3f} → {s['b']['ece']:.3f} (B − A "
                     f"{difference_text(s['ece_difference'])}); the routed axis changed on {s['routed_changed']} of "
                     f"{s['paired']} prompts")
    if comparison["levels"]:
        lines.append("95 % intervals: Newcombe's paired interval for the accuracy difference, a paired bootstrap over "
                     "prompts for the ECE difference")
    return lines + list(comparison["notices"])


def comparison_csv(comparison: dict[str, Any]) -> str:
    """One CSV row per paired prompt: its labels, then per level (prompt, then `gen_`) routed A and B,
    confidence A and B, correct A and B and the change."""
    rows = comparison["rows"]
    extra = sorted({k for r in rows for k in r["extra"]})
    levels = list(comparison["levels"])
    fields = ["routed_a", "routed_b", "confidence_a", "confidence_b", "correct_a", "correct_b", "change"]
    header = ["index", "row", "prompt", "axis", *extra]
    for level in levels:
        header += [("gen_" if level == "generation" else "") + f for f in fields]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    for r in rows:
        line = [r["index"], r["row"], r["prompt"], r["axis"] or "", *(r["extra"].get(k, "") for k in extra)]
        for level in levels:
            cell = r["levels"].get(level)
            line += ([("" if cell[f] is None else int(cell[f]) if isinstance(cell[f], bool) else cell[f]) for f in fields]
                     if cell else [""] * len(fields))
        writer.writerow(line)
    return out.getvalue()


# reading a result ---------------------------------------------------------------------------------------

def _ci(ci: list[float] | None) -> str:
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def level_figures(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The headline figures of each level, side by side (prompt level, then generation level — or a
    row saying it was skipped): {"level", "what", "n", "accuracy", "accuracy_ci95", "ece", "ece_ci95",
    "ece_debiased", "ece_debiased_ci95", "mean_confidence", "misrouted", "skipped": reason | None}."""
    out = []
    for level, what in LEVELS.items():
        summary = result["levels"].get(level)
        if summary is None:
            out.append({"level": level, "what": what, "n": 0, "skipped": "not measured: generate_tokens = 0"})
            continue
        overall = summary["slices"].get("all", {}).get("all")
        if overall is None:
            out.append({"level": level, "what": what, "n": 0, "skipped": "no labelled rows"})
            continue
        out.append({"level": level, "what": what, **{k: v for k, v in overall.items() if k != "ci_methods"},
                    "misrouted": len(summary["misrouted"]), "skipped": None})
    return out


def summary_lines(result: dict[str, Any]) -> list[str]:
    """Plain sentences about a result: what was given, analysed, rejected and changed, then each level's
    figures, each naming its level."""
    lines = [f"{result['rows_given']} rows given: {result['analysed']} analysed, {result['rejected']} rejected"
             + (" (each named in problems)" if result["rejected"] else "")
             + (f", {result['not_analysed']} not analysed ({result['stopped']})" if result.get("not_analysed") else "")]
    changes = result.get("prompt_changes") or {}
    if changes.get("changed"):
        parts = [f"{changes[c]} {c.replace('_', ' ')}" for c in CHANGES if changes.get(c)]
        lines.append(f"{changes['changed']} of {result['analysed']} analysed prompts were changed before routing "
                     f"({', '.join(parts)}): see the slice {CHANGED}")
    tokens = result.get("generate_tokens")
    for row in level_figures(result):
        what = row["what"] if row["level"] == "prompt" or not tokens else row["what"].replace(
            "the generated tokens", f"up to {tokens} generated tokens")
        if row["skipped"]:
            lines.append(f"{what[:1].upper()}{what[1:]}: {row['skipped']}")
            continue
        lines.append(f"{what[:1].upper()}{what[1:]}: accuracy {row['accuracy']:.3f}{_ci(row['accuracy_ci95'])}, "
                     f"ECE {row['ece']:.3f}{_ci(row['ece_ci95'])} (debiased {row['ece_debiased']:.3f}"
                     f"{_ci(row['ece_debiased_ci95'])}), mean confidence {row['mean_confidence']:.3f}, on {row['n']} "
                     f"labelled prompts; {row['misrouted']} misrouted")
    if any(not row["skipped"] for row in level_figures(result)):
        lines.append("95 % intervals: Wilson for accuracy, BCa bootstrap over prompts for ECE")
    return lines


def analysis_csv(result: dict[str, Any]) -> str:
    """One CSV row per analysed prompt: its labels, how the analysis changed it (`prompt_changed`),
    prompt-level routing, settle point and (if any) generation-level routing."""
    rows, axes = result["rows"], result.get("axes", AXES)
    extra = sorted({k for r in rows for k in r["extra"]})
    has_gen = any("generation" in r for r in rows)
    header = ["index", "row", "prompt", "axis", *extra, "routed", "confidence", "correct", *axes, "tokens", CHANGED,
              "settle_index", "settle_axis", "settle_confidence"]
    if has_gen:
        header += ["gen_routed", "gen_confidence", "gen_correct", *(f"gen_{a}" for a in axes), "gen_tokens", "gen_text"]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    for r in rows:
        line = [r["index"], r["row"], r["prompt"], r["axis"] or "", *(r["extra"].get(k, "") for k in extra), r["routed"],
                r["confidence"], "" if r["correct"] is None else int(r["correct"]), *(r["weights"][a] for a in axes),
                r["tokens"], changed_value(r.get("changes") or []), r["settle"]["index"], r["settle"]["axis"],
                r["settle"]["confidence"]]
        if has_gen:
            g = r.get("generation")
            line += ([g["routed"], g["confidence"], "" if g["correct"] is None else int(g["correct"]),
                      *(g["weights"][a] for a in axes), g["tokens"], g["text"]] if g else [""] * (5 + len(axes)))
        writer.writerow(line)
    return out.getvalue()


SLICE_FIELDS = ("n", "correct", "accuracy", "accuracy_ci95", "ece", "ece_ci95", "ece_debiased", "ece_debiased_ci95",
                "mean_confidence")


def _slice_line(level: str, group: str, value: str, s: dict[str, Any]) -> list[Any]:
    line: list[Any] = [level, group, value]
    for field in SLICE_FIELDS:
        if field.endswith("_ci95"):
            line += list(s[field]) if s[field] else ["", ""]
        else:
            line.append("" if s[field] is None else s[field])
    return line


def slices_csv(result: dict[str, Any]) -> str:
    """One CSV row per slice and cross-slice cell of each level: level, group ("all", a column, or
    "a × b"), value ("x" or "x × y"), then the slice's figures with their interval bounds."""
    header = ["level", "group", "value"]
    for field in SLICE_FIELDS:
        header += [f"{field[:-5]}_low", f"{field[:-5]}_high"] if field.endswith("_ci95") else [field]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    for level, summary in result["levels"].items():
        for group, values in summary["slices"].items():
            for value, s in values.items():
                writer.writerow(_slice_line(level, group, value, s))
        for group, crossed in (summary.get("cross") or {}).items():
            for a, cells in crossed["cells"].items():
                for b, s in cells.items():
                    writer.writerow(_slice_line(level, group, f"{a} × {b}", s))
    return out.getvalue()


def reliability_csv(result: dict[str, Any]) -> str:
    """The reliability bins of each level (the ECE's bins): level, bin_lower, bin_upper, count,
    confidence, accuracy."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["level", "bin_lower", "bin_upper", "count", "confidence", "accuracy"])
    for level, summary in result["levels"].items():
        for b in summary.get("reliability") or []:
            writer.writerow([level, b["bin_lower"], b["bin_upper"], b["count"], "" if b["confidence"] is None else b["confidence"],
                             "" if b["accuracy"] is None else b["accuracy"]])
    return out.getvalue()
