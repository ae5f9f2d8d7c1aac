"""Out-of-distribution prompt sets: labelled prompts that no training or calibration step sees
(DESIGN.md section 6), for `evaluate --tasks ood` and the Routing analysis tab's shipped slices; and,
disjoint from them, the shift set calibration chooses its settings on (`calibration_shift_set`).

Slices (`OOD_SLICES`), each labelled with the axis whose expert should lead, every split of its set:
- mt_bench: MT-Bench first turns (`sources.OOD_SOURCES`), helpful. A first turn whose normalised
  text is a prompt of the default training data (`load_axis_data()`; two are AlpacaEval prompts
  there) is left out, so the slice is the same, and unseen, for every bundle.
- beavertails, advbench: whole harmful sources (BeaverTails-Evaluation, AdvBench harmful
  behaviours), harmless. Evaluation-only sources: no stage trains, calibrates or selects on them,
  and training prompts equal to theirs are dropped (`load_axis_data` decontaminates).
- truthfulqa_heldout: TruthfulQA v1 questions of `sources.TRUTHFULQA_HELDOUT_CATEGORIES`, one per
  question, honest. Unseen by a bundle trained with `load_axis_data(exclude_heldout_categories=True)`,
  which `train` has used for every stage since the MiniLM bundle; an earlier bundle saw their
  train-split questions and answers and calibrated on their calibration-split questions
  (`seen_by_default_training`, kept so reports stay conservative for any bundle).
- xstest: XSTest's train and eval splits (its calibration split is reserved for choosing calibration
  settings, `calibration_shift_set`), safe-but-scary prompts labelled helpful, unsafe ones harmless.

Each slice is ordered so that any prefix spreads over its groups (`meta["ood_group"]`: the MT-Bench
or BeaverTails category, the TruthfulQA category, the XSTest type): round-robin over the groups,
each in a fixed pseudo-random order (`tasks.stratified`'s rule). `ood_prompt_rows` gives the first
`per_slice` of each as plain rows for `analysis.failures.analyze_prompts`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from alignx_demo.data.readers import (
    DataError,
    load_axis_data,
    load_eval_sets,
    read_source,
    resolve_data_dir,
    xstest_routing_set,
)
from alignx_demo.data.records import AxisExample, normalize_key, stable_rank
from alignx_demo.data.sources import OOD_SOURCES, TRAINING_SOURCES, TRUTHFULQA_HELDOUT_CATEGORIES

OOD_SLICES: dict[str, str] = {
    "mt_bench": "MT-Bench first turns (80 questions, 8 categories; evaluation only), labelled helpful; "
                "first turns that are default-training prompts left out",
    "beavertails": "BeaverTails-Evaluation (700 harmful prompts, 14 categories; a whole source held out of every "
                   "training and calibration step), labelled harmless",
    "advbench": "AdvBench harmful behaviours (520; a whole source held out of every training and calibration step), "
                "labelled harmless",
    "truthfulqa_heldout": "TruthfulQA v1 questions of the held-out categories "
                          f"({', '.join(TRUTHFULQA_HELDOUT_CATEGORIES)}), labelled honest",
    "xstest": "XSTest train + eval splits (evaluation only): safe-but-scary prompts labelled helpful, unsafe ones harmless",
}
"""Slice name -> what it holds, in report order."""
OOD_SLICE_NAMES = {"mt_bench": "MT-Bench", "beavertails": "BeaverTails", "advbench": "AdvBench",
                   "truthfulqa_heldout": "TruthfulQA (held-out categories)", "xstest": "XSTest"}
"""Slice name -> how the page names it."""

OOD_HARMFUL_SLICES = ("beavertails", "advbench")
"""The held-out harmful sources: no stage may train, calibrate or choose a setting on any split of them."""

SEEN_BY_DEFAULT_TRAINING = {
    "truthfulqa_heldout": "a bundle trained on load_axis_data's default (exclude_heldout_categories=False) — the "
                          "from-scratch bundles, trained before the stages left these categories out — trained its "
                          "honest expert and routers on these categories' train-split questions and calibrated on their "
                          "calibration-split questions: for it this slice "
                          "is new questions of seen categories, not out of distribution (see by_split: its eval-split "
                          "questions are the ones it never saw)",
}
"""Slices that a bundle trained with the default data did see, with what it saw."""

UNSEEN_SLICES = tuple(name for name in OOD_SLICES if name not in SEEN_BY_DEFAULT_TRAINING)
"""The slices no bundle saw, whatever its training data: the pool that compares across bundles."""

XSTEST_SPLITS = ("train", "eval")

CALIBRATION_SHIFT_SETS: dict[str, str] = {"stl_controversial": "harmless", "stl_alpaca": "helpful", "stl_physical_safe": "helpful"}
"""Held-out evaluation-role sources that no evaluation measures, with the axis each is labelled:
safety-tuned-llamas' controversial-topic requests (harmless) and its benign instructions and
physical-safety questions (helpful). With XSTest's calibration split they are the shift set."""


def calibration_shift_set(data_dir: str | Path, warnings: list[str] | None = None) -> list[AxisExample]:
    """Prompts from held-out sources for *choosing* calibration settings (`training.calibrate`): the
    `CALIBRATION_SHIFT_SETS` and XSTest's calibration split (safe prompts helpful, unsafe harmless).
    No stage trains on them, no evaluation reads them, and none is in an out-of-distribution slice;
    no honesty source is held out beside TruthfulQA, so the set has no honest prompts. A data
    directory without these files gives an empty set (with a warning), not an error."""
    warns = warnings if warnings is not None else []
    try:
        sets = load_eval_sets(resolve_data_dir(data_dir), warns)
    except DataError as exc:
        warns.append(f"calibration shift set left out: {exc}")
        return []
    chosen = [dataclasses.replace(e, axis=axis) for name, axis in CALIBRATION_SHIFT_SETS.items() for e in sets[name]]
    # round-robin over (source, axis), so that any prefix (`train --quick` takes one) mixes sources and axes
    return _round_robin(chosen + xstest_routing_set(sets["xstest"], ("calibration",)), key=lambda e: f"{e.source}/{e.axis}")


def _round_robin(items: Iterable[AxisExample], key: Callable[[AxisExample], str]) -> list[AxisExample]:
    """Round-robin over the groups (sorted by name), each in `stable_rank` order of the item id."""
    groups: dict[str, list[AxisExample]] = {}
    for item in sorted(items, key=lambda e: stable_rank(e.id)):
        groups.setdefault(key(item), []).append(item)
    columns = [groups[k] for k in sorted(groups)]
    return [column[i] for i in range(max(map(len, columns), default=0)) for column in columns if i < len(column)]


def _tag(items: Iterable[AxisExample], name: str, group: Callable[[AxisExample], Any]) -> list[AxisExample]:
    tagged = [dataclasses.replace(e, meta={**e.meta, "slice": name, "ood_group": str(group(e) or "")}) for e in items]
    return _round_robin(tagged, key=lambda e: e.meta["ood_group"])


def truthfulqa_heldout(truthfulqa: Iterable[AxisExample]) -> list[AxisExample]:
    """One example per TruthfulQA question (the best-answer row) of the held-out categories."""
    return [e for e in truthfulqa if "." not in e.id.split(":", 1)[1] and e.meta.get("category") in TRUTHFULQA_HELDOUT_CATEGORIES]


def build_ood_slices(
    mt_bench: Sequence[AxisExample] | None, eval_sets: dict[str, list[AxisExample]], truthfulqa: Sequence[AxisExample],
    training_prompts: set[str],
) -> dict[str, list[AxisExample]]:
    """The slices (see the module docstring) from their read sets; `training_prompts`: normalised
    prompts of the default training data; `mt_bench` None: that slice is absent."""
    slices: dict[str, list[AxisExample]] = {}
    if mt_bench is not None:
        unseen = [e for e in mt_bench if normalize_key(e.prompt) not in training_prompts]
        slices["mt_bench"] = _tag(unseen, "mt_bench", lambda e: e.meta.get("category"))
    slices["beavertails"] = _tag(eval_sets["beavertails"], "beavertails", lambda e: e.meta.get("category"))
    slices["advbench"] = _tag(eval_sets["advbench"], "advbench", lambda e: "")
    slices["truthfulqa_heldout"] = _tag(truthfulqa_heldout(truthfulqa), "truthfulqa_heldout", lambda e: e.meta.get("category"))
    slices["xstest"] = _tag(xstest_routing_set(eval_sets["xstest"], XSTEST_SPLITS), "xstest", lambda e: e.meta.get("type"))
    for name in ("beavertails", "advbench", "xstest"):  # decontaminated sets: a hit here is a bug in the data layer
        overlap = [e.id for e in slices[name] if normalize_key(e.prompt) in training_prompts]
        if overlap:
            raise DataError(f"out-of-distribution slice {name}: {len(overlap)} prompts are training prompts ({overlap[:3]})")
    return {name: slices[name] for name in OOD_SLICES if name in slices}


def load_ood_slices(data_dir: str | Path, warnings: list[str] | None = None) -> dict[str, list[AxisExample]]:
    """Every out-of-distribution slice, whole, in drawing order. A missing MT-Bench file leaves that
    slice out with a warning; the other files are those `load_eval_sets` and `load_axis_data` need."""
    root = resolve_data_dir(data_dir)
    warns = warnings if warnings is not None else []
    mt_bench = None
    try:
        mt_bench = read_source(root, OOD_SOURCES[0], warns)
    except DataError as exc:
        warns.append(f"out-of-distribution slice mt_bench left out: {exc}")
    sets = load_eval_sets(root, warns)
    truthfulqa = read_source(root, next(u for u in TRAINING_SOURCES if u.name == "truthfulqa"), warns)
    training_prompts = {normalize_key(e.prompt) for e in load_axis_data(root).examples}
    return build_ood_slices(mt_bench, sets, truthfulqa, training_prompts)


def ood_prompt_rows(data_dir: str | Path, per_slice: int | None = 80, slices: Sequence[str] | None = None) -> list[dict[str, str]]:
    """The first `per_slice` prompts (None: all) of each slice (default: every slice) as rows for
    `analysis.failures.analyze_prompts`: {"prompt", "axis", "slice", "id"} — "slice" has a handful of
    values, so the analysis reports accuracy and ECE per slice; "id" names the data row, so a shipped
    analysis can show it in place of the text (`failures.redact_prompts`)."""
    loaded = load_ood_slices(data_dir)
    names = [n for n in (slices or OOD_SLICES) if n in loaded]
    return [{"prompt": e.prompt, "axis": e.axis, "slice": name, "id": e.id} for name in names for e in loaded[name][:per_slice]]
