"""Routing failures across a whole prompt set: where the router sends each prompt, how often it is
right, how sure it is when it is wrong, and on which slices it fails.

Each prompt is routed in left-padded batches with attention masks (the routers' causal running mean
leaves padding out, so a batched prompt routes exactly as it does alone) and, optionally, a few
greedy tokens are generated in the same batch. Levels, each against the row's axis label:
- **prompt**: the prompt-level weights of `analysis.settle` (mean over the tokens after the template
  prefix and over layers; pooled by the calibration stack's run-level part when calibrated);
- **generation** (with `generate_tokens`): the mean over the generated tokens (up to and including an
  end-of-sequence token) of the weights each carries (the trace convention), pooled the same way.
Per level: a confusion matrix true × routed, accuracy and top-label ECE (15 bins) per slice — all,
true axis, and each extra column of the file with few distinct values (e.g. `source`) — with 95 %
percentile bootstrap intervals (scipy.stats.bootstrap, fixed seed), and the misrouted rows, most
confident first. Per prompt also the settle point (`analysis.settle.settle_point`), and per axis the
mean settle index.
"""

from __future__ import annotations

import csv
import io
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from alignx_demo.analysis.prompt_files import make_row
from alignx_demo.analysis.settle import (
    RoutedPrompt, cumulative_weights, encode_routed_prompt, layer_mean_weights, pooler, routing_description, settle_point,
    unwrap,
)
from alignx_demo.config import AXES, RoutingSettings
from alignx_demo.data.templates import template_prefix_length
from alignx_demo.generation import context_length, input_device

ANALYSIS_SCHEMA = "alignx-routing-analysis/1"
N_BINS = 15
N_RESAMPLES = 1000
SEED = 0
MAX_SLICE_VALUES = 20
"""An extra column becomes a slice when it has at most this many distinct values (and some repeat)."""
DEFINITIONS = {
    "prompt": "mean of the routing weights over the prompt's tokens after the template prefix and over layers "
              "(pooled by the run-level calibrator when calibrated); routed = argmax, confidence = max",
    "generation": "mean over the generated tokens (greedy, up to and including end-of-sequence) of the weights each "
                  "carries (the routing of the forward that produced it), pooled the same way",
    "ece": f"top-label expected calibration error, {N_BINS} equal-width confidence bins",
    "ci95": f"95 % percentile bootstrap interval over rows, {N_RESAMPLES} resamples, seed {SEED}",
    "settle": "settle index: the first token (counted after the template prefix, from 0) from which the routed axis "
              "of the prompt-level weights of the prefix never changes again",
}
Progress = Callable[[int, int], Any]


# statistics ------------------------------------------------------------------------------------------

def top_label_ece(confidence: Any, correct: Any, n_bins: int = N_BINS, axis: int = -1) -> np.ndarray:
    """Σ_b (n_b / n) · |accuracy_b − confidence_b| over equal-width bins (b/n_bins, (b+1)/n_bins];
    vectorised over the other axes (for `scipy.stats.bootstrap`)."""
    conf = np.moveaxis(np.asarray(confidence, dtype=float), axis, -1)
    corr = np.moveaxis(np.asarray(correct, dtype=float), axis, -1)
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    member = bins[..., None] == np.arange(n_bins)  # (…, n, B)
    gap = (member * (conf - corr)[..., None]).sum(-2)  # Σ_b (confidence − correct)
    return np.abs(gap).sum(-1) / conf.shape[-1]


def _mean(values: Any, axis: int = -1) -> np.ndarray:
    return np.asarray(values, dtype=float).mean(axis=axis)


def bootstrap_interval(statistic: Callable[..., np.ndarray], *samples: Sequence[float]) -> list[float] | None:
    """95 % percentile bootstrap interval of a statistic of paired samples (None below 2 rows)."""
    if len(samples[0]) < 2:
        return None
    from scipy.stats import bootstrap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = bootstrap(tuple(np.asarray(s, dtype=float) for s in samples), statistic, paired=True, vectorized=True,
                           n_resamples=N_RESAMPLES, method="percentile", rng=np.random.default_rng(SEED))
    low, high = result.confidence_interval
    return [round(float(low), 6), round(float(high), 6)]


def slice_stats(confidence: Sequence[float], correct: Sequence[bool]) -> dict[str, Any]:
    """n, accuracy, ECE (each with its bootstrap interval) and mean confidence of some rows."""
    conf, corr = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float)
    return {
        "n": int(len(conf)),
        "accuracy": round(float(corr.mean()), 6),
        "accuracy_ci95": bootstrap_interval(lambda c, k, axis=-1: _mean(k, axis), conf, corr),
        "ece": round(float(top_label_ece(conf, corr)), 6),
        "ece_ci95": bootstrap_interval(top_label_ece, conf, corr),
        "mean_confidence": round(float(conf.mean()), 6),
    }


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

def _level(weights: torch.Tensor, axis: str | None) -> dict[str, Any]:
    routed = AXES[int(weights.argmax())]
    return {"weights": {a: round(float(weights[k]), 6) for k, a in enumerate(AXES)}, "routed": routed,
            "confidence": round(float(weights.max()), 6), "correct": None if axis is None else routed == axis}


def _analyse_row(index: int, row: dict[str, Any], prompt: RoutedPrompt, routed: dict[str, Any], pool: Any,
                 tokenizer: Any) -> dict[str, Any]:
    curve = cumulative_weights(routed["tokens"], pool)
    settle = settle_point(curve)
    settle["position"] = prompt.start + settle["index"]
    out = {"index": index, "row": row["row"], "prompt": prompt.prompt, "axis": row["axis"], "extra": row["extra"],
           "notices": row["notices"] + prompt.notices, "tokens": int(curve.shape[0]), **_level(curve[-1], row["axis"]),
           "settle": settle}
    if routed["generated"] is not None and len(routed["generated"]):
        mean = routed["generated"].mean(0, keepdim=True)
        gen = _level((pool(mean) if pool is not None else mean)[0], row["axis"])
        text = tokenizer.decode(routed["generated_ids"], skip_special_tokens=True)
        out["generation"] = {"text": text, "tokens": len(routed["generated_ids"]), **gen}
    return out


# summaries ----------------------------------------------------------------------------------------------

def _slice_columns(rows: list[dict[str, Any]]) -> list[str]:
    columns = sorted({k for r in rows for k in r["extra"]})
    keep = []
    for column in columns:
        values = [r["extra"].get(column) for r in rows if r["extra"].get(column) not in (None, "")]
        distinct = len(set(values))
        if values and distinct <= MAX_SLICE_VALUES and distinct < len(values):
            keep.append(column)
    return keep


def summarise_level(rows: list[dict[str, Any]], level: str) -> dict[str, Any]:
    """Confusion matrix, per-slice accuracy/ECE with intervals and the misrouted rows of one level."""
    get = (lambda r: r) if level == "prompt" else (lambda r: r.get("generation"))
    labelled = [(r, get(r)) for r in rows if r["axis"] is not None and get(r) is not None]
    matrix = [[0] * len(AXES) for _ in AXES]
    for r, x in labelled:
        matrix[AXES.index(r["axis"])][AXES.index(x["routed"])] += 1

    def stats(group: list[tuple[dict, dict]]) -> dict[str, Any]:
        return slice_stats([x["confidence"] for _, x in group], [x["correct"] for _, x in group])

    slices: dict[str, dict[str, Any]] = {}
    if labelled:
        slices["all"] = {"all": stats(labelled)}
        slices["axis"] = {a: stats([p for p in labelled if p[0]["axis"] == a]) for a in AXES
                          if any(p[0]["axis"] == a for p in labelled)}
        for column in _slice_columns([r for r, _ in labelled]):
            values = sorted({r["extra"].get(column) for r, _ in labelled if r["extra"].get(column) not in (None, "")})
            slices[column] = {v: stats([p for p in labelled if p[0]["extra"].get(column) == v]) for v in values}
    wrong = sorted((p for p in labelled if not p[1]["correct"]), key=lambda p: -p[1]["confidence"])
    misrouted = [{"index": r["index"], "row": r["row"], "prompt": r["prompt"], "axis": r["axis"], "routed": x["routed"],
                  "confidence": x["confidence"], "weights": x["weights"], "extra": r["extra"]} for r, x in wrong]
    return {"labelled": len(labelled), "confusion": {"true": list(AXES), "routed": list(AXES), "matrix": matrix},
            "slices": slices, "misrouted": misrouted}


def summarise_settle(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean settle index, fraction of the prompt and prompt length: over all rows and per true axis."""
    def mean_of(group: list[dict[str, Any]]) -> dict[str, Any]:
        n = len(group)
        return {"n": n, "mean_index": round(sum(r["settle"]["index"] for r in group) / n, 4),
                "mean_fraction": round(sum(r["settle"]["fraction"] for r in group) / n, 4),
                "mean_tokens": round(sum(r["tokens"] for r in group) / n, 4)}

    out = {a: mean_of([r for r in rows if r["axis"] == a]) for a in AXES if any(r["axis"] == a for r in rows)}
    if rows:
        out["all"] = mean_of(rows)
    return out


# the analysis -------------------------------------------------------------------------------------------

def _coerce(rows: Sequence[Any]) -> tuple[list[dict[str, Any]], list[str]]:
    good, problems = [], []
    for i, row in enumerate(rows, start=1):
        if isinstance(row, dict) and {"row", "prompt", "axis", "extra", "notices"} <= set(row):
            good.append(row)
            continue
        try:
            good.append(make_row(row, i))
        except ValueError as err:
            problems.append(f"Row {i}: {err}; left out.")
    return good, problems


def analyze_prompts(
    loaded_or_mocae: Any, tokenizer: Any, rows: Sequence[Any], *, generate_tokens: int = 0, batch_size: int = 16,
    max_rows: int | None = None, max_seconds: float | None = None, routing: RoutingSettings | None = None,
    progress: Progress | None = None, model_name: str | None = None,
) -> dict[str, Any]:
    """Route every prompt of a set and say where routing fails. See the module docstring for levels.

    `rows`: the rows of `parse_prompt_file`, or dicts with "prompt" (and "axis", extra columns), or
    prompt strings; bad ones are left out with a sentence in "problems". Rows are analysed in their
    order, `batch_size` at a time, until `max_rows` rows or `max_seconds` (checked before each batch,
    with the last batch's time as the estimate of the next; the first batch always runs) — "stopped"
    says which limit ended it and "analysed" how many rows were done. `progress(done, total)` is
    called after each batch. Soft calibrated routing unless `routing` says otherwise.

    Returns plain JSON-able data:

        {"schema": "alignx-routing-analysis/1", "model", "axes", "routing": {…, "calibration"},
         "generate_tokens", "batch_size", "definitions": {…}, "rows_given", "analysed",
         "stopped": None | "max_rows" | "max_seconds", "notices": [sentence…], "problems": [sentence…],
         "seconds",
         "rows": [{"index", "row", "prompt", "axis", "extra", "notices", "tokens", "weights": {axis: w},
                   "routed", "confidence", "correct": bool | None,
                   "settle": {"index", "position", "axis", "confidence", "tokens", "fraction"},
                   "generation": {"text", "tokens", "weights", "routed", "confidence", "correct"}}],  # with generate_tokens
         "levels": {"prompt": {"labelled", "confusion": {"true", "routed", "matrix"},
                               "slices": {"all": {"all": S}, "axis": {axis: S}, column: {value: S}},
                               "misrouted": [{"index", "row", "prompt", "axis", "routed", "confidence", "weights", "extra"}]},
                    "generation": {…}},                                                               # with generate_tokens
         "settle": {axis: {"n", "mean_index", "mean_fraction", "mean_tokens"}, "all": {…}}}

    where S = {"n", "accuracy", "accuracy_ci95", "ece", "ece_ci95", "mean_confidence"}.
    """
    started = time.monotonic()
    mocae, tokenizer, name = unwrap(loaded_or_mocae, tokenizer)
    routing = routing or RoutingSettings(mode="soft", calibrated=True)
    context = context_length(mocae.model)
    if not isinstance(generate_tokens, int) or not 0 <= generate_tokens <= context // 2:
        raise ValueError(f"generate_tokens must be an integer from 0 to {context // 2}, got {generate_tokens!r}")
    if not isinstance(batch_size, int) or not 1 <= batch_size <= 512:
        raise ValueError(f"batch_size must be an integer from 1 to 512, got {batch_size!r}")
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")
    good, problems = _coerce(rows)
    notices: list[str] = []
    stopped = None
    todo = good
    if max_rows is not None and len(good) > max_rows:
        todo, stopped = good[:max_rows], "max_rows"
        notices.append(f"only the first {max_rows} of {len(good)} rows were analysed (row limit)")
    pool = pooler(mocae, routing)
    skip = template_prefix_length(tokenizer)
    analysed: list[dict[str, Any]] = []
    last_batch = 0.0
    for start in range(0, len(todo), batch_size):
        elapsed = time.monotonic() - started
        if start and max_seconds is not None and elapsed + last_batch > max_seconds:
            stopped = "max_seconds"
            notices.append(f"stopped at the time limit ({max_seconds:g} s): {len(analysed)} of {len(good)} rows analysed")
            break
        batch_started = time.monotonic()
        batch = todo[start : start + batch_size]
        prompts = [encode_routed_prompt(tokenizer, r["prompt"], context=context, room=generate_tokens, skip=skip) for r in batch]
        routed = route_batch(mocae, tokenizer, prompts, routing, generate_tokens)
        for offset, (row, prompt, result) in enumerate(zip(batch, prompts, routed)):
            analysed.append(_analyse_row(start + offset, row, prompt, result, pool, tokenizer))
        last_batch = time.monotonic() - batch_started
        if progress is not None:
            progress(len(analysed), len(todo))
    if problems:
        notices.append(f"{len(problems)} row(s) could not be used (see problems)")
    levels = {"prompt": summarise_level(analysed, "prompt")}
    if generate_tokens:
        levels["generation"] = summarise_level(analysed, "generation")
    return {
        "schema": ANALYSIS_SCHEMA, "model": model_name if model_name is not None else name, "axes": list(AXES),
        "routing": routing_description(mocae, routing), "generate_tokens": generate_tokens, "batch_size": batch_size,
        "definitions": DEFINITIONS, "rows_given": len(good), "analysed": len(analysed), "stopped": stopped,
        "notices": notices, "problems": problems, "seconds": round(time.monotonic() - started, 3), "rows": analysed,
        "levels": levels, "settle": summarise_settle(analysed),
    }


def analysis_csv(result: dict[str, Any]) -> str:
    """One CSV row per analysed prompt: its labels, prompt-level routing, settle point and (if any)
    generation-level routing."""
    rows = result["rows"]
    extra = sorted({k for r in rows for k in r["extra"]})
    has_gen = any("generation" in r for r in rows)
    header = ["index", "row", "prompt", "axis", *extra, "routed", "confidence", "correct", *AXES, "tokens",
              "settle_index", "settle_axis", "settle_confidence"]
    if has_gen:
        header += ["gen_routed", "gen_confidence", "gen_correct", *(f"gen_{a}" for a in AXES), "gen_tokens", "gen_text"]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    for r in rows:
        line = [r["index"], r["row"], r["prompt"], r["axis"] or "", *(r["extra"].get(k, "") for k in extra), r["routed"],
                r["confidence"], "" if r["correct"] is None else int(r["correct"]), *(r["weights"][a] for a in AXES),
                r["tokens"], r["settle"]["index"], r["settle"]["axis"], r["settle"]["confidence"]]
        if has_gen:
            g = r.get("generation")
            line += ([g["routed"], g["confidence"], "" if g["correct"] is None else int(g["correct"]),
                      *(g["weights"][a] for a in AXES), g["tokens"], g["text"]] if g else [""] * 8)
        writer.writerow(line)
    return out.getvalue()
