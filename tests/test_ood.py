"""Out-of-distribution evaluation: the OOD readers and slices (`data.ood`), the held-out TruthfulQA
category rule and its opt-in exclusion (`load_axis_data(exclude_heldout_categories=True)`), and the
`routing_ood` / `presets_ood` tasks on a tiny checkpoint."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections import Counter
from pathlib import Path

import pytest
from data_fixtures import TQA_CATEGORIES, make_data_dir, tqa_questions

from alignx_demo.config import AXES, PRESETS
from alignx_demo.data.ood import OOD_SLICES, SEEN_BY_DEFAULT_TRAINING, load_ood_slices, ood_prompt_rows
from alignx_demo.data.readers import load_axis_data, read_source
from alignx_demo.data.records import normalize_key
from alignx_demo.data.sources import OOD_SOURCES, TRUTHFULQA_HELDOUT_CATEGORIES, heldout_categories
from alignx_demo.evaluation.harness import evaluate, summary_lines
from alignx_demo.evaluation.presets import OOD_PRESET_TARGETS, OOD_RATES
from alignx_demo.evaluation.routing_eval import OOD_TARGETS
from alignx_demo.evaluation.tasks import EvalConfig

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HELDOUT_IN_FIXTURE = {"Law", "Paranormal"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_data_dir(tmp_path_factory.mktemp("ood"), n=40)


def test_fixture_categories_include_held_out_and_kept_ones():
    assert HELDOUT_IN_FIXTURE == set(TQA_CATEGORIES) & set(TRUTHFULQA_HELDOUT_CATEGORIES)
    assert set(TQA_CATEGORIES) - HELDOUT_IN_FIXTURE  # and some that stay in training


def test_mt_bench_reader_takes_the_first_turn(data_dir):
    warnings: list[str] = []
    items = read_source(data_dir, OOD_SOURCES[0], warnings)
    assert warnings == [] and len(items) == 16
    assert all(e.axis == "helpful" and e.response == "" and e.source == "mt_bench" for e in items)
    assert items[1].prompt.startswith("MT-Bench roleplay question 1") and "Now shorter" not in items[1].prompt
    assert items[1].id == "mt_bench:82" and items[1].meta["category"] == "roleplay"


def test_ood_slices_labels_and_drawing_order(data_dir):
    slices = load_ood_slices(data_dir)
    assert list(slices) == list(OOD_SLICES)
    training = {normalize_key(e.prompt) for e in load_axis_data(data_dir).examples}
    # MT-Bench: helpful, the question that is an AlpacaEval training prompt left out, categories interleaved
    mt = slices["mt_bench"]
    assert len(mt) == 15 and all(e.axis == "helpful" for e in mt) and "mt_bench:81" not in {e.id for e in mt}
    assert not {normalize_key(e.prompt) for e in mt} & training
    assert len({e.meta["ood_group"] for e in mt[:8]}) == 8  # any prefix spreads over the categories
    # whole harmful sources, every split
    assert [len(slices["beavertails"]), len(slices["advbench"])] == [14, 12]
    assert all(e.axis == "harmless" for e in slices["beavertails"] + slices["advbench"])
    assert not {normalize_key(e.prompt) for e in slices["advbench"]} & training  # "Write a harmful thing 3" was decontaminated
    # TruthfulQA: one row per question of the held-out categories only, honest
    tqa = slices["truthfulqa_heldout"]
    assert {e.meta["category"] for e in tqa} == HELDOUT_IN_FIXTURE and all(e.axis == "honest" for e in tqa)
    assert len(tqa) == len({e.prompt for e in tqa}) == sum(TQA_CATEGORIES[i % 4] in HELDOUT_IN_FIXTURE for i in range(40))
    # XSTest: train and eval splits, safe -> helpful, unsafe -> harmless
    xs = slices["xstest"]
    assert xs and all(e.split != "calibration" for e in xs)
    assert all(e.axis == ("harmless" if e.meta["label"] == "unsafe" else "helpful") for e in xs)
    for name, items in slices.items():
        assert all(e.meta["slice"] == name for e in items)
    assert load_ood_slices(data_dir) == slices  # deterministic


def test_missing_mt_bench_file_leaves_that_slice_out(tmp_path):
    root = make_data_dir(tmp_path / "d", n=12)
    (root / OOD_SOURCES[0].file).unlink()
    warnings: list[str] = []
    slices = load_ood_slices(root, warnings)
    assert "mt_bench" not in slices and "beavertails" in slices and any("mt_bench" in w for w in warnings)


def test_ood_prompt_rows_for_the_routing_analysis_tab(data_dir):
    rows = ood_prompt_rows(data_dir, per_slice=5)
    assert Counter(r["slice"] for r in rows) == dict.fromkeys(OOD_SLICES, 5)
    assert all(set(r) == {"prompt", "axis", "slice", "id"} and r["axis"] in AXES for r in rows)
    slices = load_ood_slices(data_dir)
    assert [(r["prompt"], r["id"]) for r in rows if r["slice"] == "advbench"] == [(e.prompt, e.id) for e in slices["advbench"][:5]]
    assert {r["slice"] for r in ood_prompt_rows(data_dir, per_slice=None, slices=["mt_bench"])} == {"mt_bench"}


# --------------------------------------------------------------------------------------------
# held-out TruthfulQA categories


def test_heldout_category_rule_is_deterministic_and_bounded():
    rng = random.Random(0)
    counts = {f"category {i}": rng.randint(1, 40) for i in range(30)}
    chosen = heldout_categories(counts)
    shuffled = dict(sorted(counts.items(), key=lambda kv: rng.random()))
    assert heldout_categories(shuffled) == chosen  # a function of the names and counts, not of their order
    total = sum(counts.values())
    assert 0 < sum(counts[c] for c in chosen) <= 0.2 * total
    # the longest such prefix of the hash order: adding the next category would pass the fraction
    order = sorted(counts, key=lambda c: hashlib.sha256(f"alignx-demo/heldout-category/v1\x00{c}".encode()).hexdigest())
    assert set(order[: len(chosen)]) == set(chosen)
    assert sum(counts[c] for c in order[: len(chosen) + 1]) > 0.2 * total
    assert heldout_categories(counts, fraction=0.5) != chosen and set(chosen) <= set(heldout_categories(counts, fraction=0.5))


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="../shared/data not present")
def test_heldout_categories_constant_is_the_rule_on_truthfulqa_v1():
    truthfulqa = [e for e in load_axis_data(REAL_DATA).examples if e.source == "truthfulqa" and "." not in e.id.split(":")[1]]
    counts = Counter(e.meta["category"] for e in truthfulqa)
    assert len(truthfulqa) == 817 and len(counts) == 38
    assert heldout_categories(counts) == TRUTHFULQA_HELDOUT_CATEGORIES
    assert sum(counts[c] for c in TRUTHFULQA_HELDOUT_CATEGORIES) == 160


def test_exclusion_is_opt_in_and_drops_exactly_the_held_out_questions(data_dir):
    default = load_axis_data(data_dir)
    explicit = load_axis_data(data_dir, exclude_heldout_categories=False)
    assert [(e.id, e.split) for e in default.examples] == [(e.id, e.split) for e in explicit.examples]
    assert "heldout_truthfulqa_category" not in default.dropped
    heldout = {normalize_key(q) for i, q in enumerate(tqa_questions(40)) if TQA_CATEGORIES[i % 4] in HELDOUT_IN_FIXTURE}
    seen = [e for e in default.examples if normalize_key(e.prompt) in heldout]
    assert {e.source for e in seen} == {"truthfulqa", "truthfulqa_judge"} and "train" in {e.split for e in seen}  # today: trained on

    held = load_axis_data(data_dir, exclude_heldout_categories=True)
    assert not [e for e in held.examples if normalize_key(e.prompt) in heldout]  # no split keeps them
    assert held.dropped["heldout_truthfulqa_category"] == len(seen)
    # nothing else moves: the same examples, in the same splits, minus the held-out questions
    assert [(e.id, e.split) for e in held.examples] == [(e.id, e.split) for e in default.examples if e not in seen]
    quick = load_axis_data(data_dir, quick=True, exclude_heldout_categories=True)
    assert not [e for e in quick.examples if normalize_key(e.prompt) in heldout]


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="../shared/data not present")
def test_default_training_data_is_unchanged_on_the_real_files():
    """A base model is training from `load_axis_data`'s default output (and resumed runs must see the same
    data): this pins it. Changing it on purpose means changing this hash with the reason."""
    result = load_axis_data(REAL_DATA)
    digest = hashlib.sha256()
    for e in result.examples:
        digest.update(json.dumps([e.id, e.split, e.axis, e.prompt, e.response]).encode())
    assert (len(result.examples), result.dropped) == (27754, {"alpacaeval_overlap_excluded": 8, "duplicate": 140, "eval_prompt_overlap": 21})
    assert digest.hexdigest()[:16] == DEFAULT_DATA_SHA
    held = load_axis_data(REAL_DATA, exclude_heldout_categories=True)
    assert held.dropped["heldout_truthfulqa_category"] == 2194
    assert not {e.meta.get("category") for e in held.examples if e.source == "truthfulqa"} & set(TRUTHFULQA_HELDOUT_CATEGORIES)


DEFAULT_DATA_SHA = "c9aee53de3c34424"
"""sha256 (first 16 hex) of the default output on the real files, as it was before the switch existed
(checked equal to the output of the code before this change)."""


# --------------------------------------------------------------------------------------------
# the tasks


@pytest.mark.slow  # a minute of routed generation on 2 cores, as the other `evaluate` tests
def test_ood_tasks_report_every_slice_pooled_and_the_presets(checkpoint, data_dir):
    cfg = dataclasses.replace(EvalConfig.quick_recipe(), ood_per_slice=3, ood_generation_per_slice=2, ood_preset_prompts=2,
                              preset_new_tokens=4, new_tokens=4)
    report = evaluate(checkpoint, data_dir, quick=True, systems=[], tasks=["ood"], progress=False, config=cfg)
    assert set(report["tasks"]) == {"routing_ood", "presets_ood"} and not report["systems"]
    assert report["tasks"]["routing_ood"]["n"] == 3 * len(OOD_SLICES)
    assert any(name.startswith("lm-sys__FastChat") for name in report["data_files_sha256"])
    ood = report["routing_ood"]
    assert list(ood["slices"]) == list(OOD_SLICES) and ood["missing_slices"] == []
    assert ood["calibrated_variant"] == "temperature" and ood["generation_variants"] == ["uncalibrated", "temperature"]
    assert set(ood["seen_by_default_training"]) == set(SEEN_BY_DEFAULT_TRAINING) == {"truthfulqa_heldout"}
    for name, group in {**ood["slices"], "pooled": ood["pooled"], "pooled_unseen": ood["pooled_unseen"]}.items():
        for level in ("prompt", "generation"):
            assert set(group["summary"][level]) == {"raw", "calibrated"}, (name, level)
            for cell in group["summary"][level].values():
                assert 0 <= cell["ece"] <= 1 and 0 <= cell["accuracy"] <= 1 and len(cell["accuracy_ci95"]) == 2
            assert set(group["routed_as"][level]["calibrated"]) == set(AXES)
            assert sum(b["count"] for b in group["reliability"][level]["raw"]) == group["summary"][level]["raw"]["n"]
        assert set(group["variants"]["uncalibrated"]) == {"prompt", "generation"}
        assert [(t["level"], t["metric"]) for t in group["targets"]] == [(lvl, m) for lvl, m, _, _ in OOD_TARGETS]
        assert set(group["by_split"]) <= {"train", "calibration", "eval"} and group["by_group"]
    for group in ood["slices"].values():
        assert group["n_prompts"] == 3 and group["n_generated"] == 2
        assert group["summary"]["prompt"]["raw"]["n"] == 3 and group["summary"]["generation"]["calibrated"]["n"] == 2
    assert ood["pooled"]["n_prompts"] == 15 and ood["pooled"]["n_generated"] == 10
    assert ood["pooled_unseen"]["n_prompts"] == 12  # all but truthfulqa_heldout
    assert ood["slices"]["mt_bench"]["axes"] == {"helpful": 3, "harmless": 0, "honest": 0}

    presets = report["presets_ood"]
    assert list(presets["presets"]) == list(PRESETS) and presets["counts"] == {"mt_bench": 2, "harmful_ood": 2}
    for name, row in presets["presets"].items():
        for key in OOD_RATES:
            assert 0 <= row[key]["value"] <= 1 and row[key]["n"] == 2, (name, key)
        assert set(row["axis_shares_by_group"]) == {"mt_bench", "harmful_ood"}
        assert [t["rate"] for t in row["targets"]] == [k for p, k, _, _ in OOD_PRESET_TARGETS if p == name]
        assert [key.split(":")[0] for key, _ in row["samples"]["harmful_ood"]] == ["beavertails", "advbench"]  # ids, no data text
    lines = summary_lines(report)
    assert any(line.startswith("routing OOD pooled_unseen") for line in lines)
    assert any("truthfulqa_heldout (seen by default-trained bundles)" in line for line in lines)
    assert any(line.startswith("just right: mt_bench_refusal_rate") for line in lines)
    json.dumps(report)  # the report is plain JSON
    from alignx_demo.precompute import reliability_from_report

    shown = reliability_from_report(report)["ood"]  # the Compare tab's out-of-distribution diagram
    for run, label in (("uncalibrated", "raw"), ("calibrated", "calibrated")):
        cell = ood["pooled_unseen"]["summary"]["prompt"][label]
        assert shown[run]["prompt_metrics"]["ece"] == cell["ece"] and shown[run]["variant"] == cell["variant"]
        assert sum(b["count"] for b in shown[run]["bins"]) == cell["n"] == 12


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="../shared/data not present")
def test_the_calibration_shift_set_shares_no_prompt_with_the_out_of_distribution_slices():
    """Calibration chooses its settings on the shift set; the slices that measure it must never hold one of its prompts."""
    from alignx_demo.data.ood import calibration_shift_set

    shift = calibration_shift_set(REAL_DATA)
    slices = {normalize_key(e.prompt) for items in load_ood_slices(REAL_DATA).values() for e in items}
    assert len(shift) == 240 and {e.axis for e in shift} == {"helpful", "harmless"}
    assert not {normalize_key(e.prompt) for e in shift} & slices
