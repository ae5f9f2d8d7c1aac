"""Data readers and splits, on tiny synthetic files in the real formats (tmp_path)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import get_args

import pytest

from alignx_demo.config import AXES
from alignx_demo.data import readers
from alignx_demo.data.readers import SOURCE_FILES, DataError, load_axis_data, load_eval_sets, read_source
from alignx_demo.data.records import SPLITS, AxisExample, eval_prompts, normalize_key, split_of
from alignx_demo.data.sources import EVAL_SOURCES, SOURCES, TRAINING_SOURCES, XSTEST_COMPLETION_MODELS, Parser

sys.path.insert(0, str(Path(__file__).parent))
from data_fixtures import make_data_dir, tqa_questions  # noqa: E402

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_data_dir(tmp_path_factory.mktemp("data"))


def test_split_of_is_deterministic_and_80_10_10():
    keys = [f"key {i}" for i in range(20000)]
    first = [split_of(k) for k in keys]
    assert first == [split_of(k) for k in keys]
    counts = Counter(first)
    assert set(counts) == set(SPLITS)
    assert abs(counts["train"] / len(keys) - 0.8) < 0.02
    assert abs(counts["calibration"] / len(keys) - 0.1) < 0.01
    assert abs(counts["eval"] / len(keys) - 0.1) < 0.01


def test_axis_example_validates_axis_and_split():
    AxisExample("a:1", "", "p", "", "a", "eval")
    AxisExample("a:1", "formal", "p", "r", "user", "train")  # a checkpoint's own axis (your labels)
    for bad in ("Kind", "two words", "helpful!"):
        with pytest.raises(ValueError, match="axis"):
            AxisExample("a:1", bad, "p", "r", "a", "train")
    with pytest.raises(ValueError, match="split"):
        AxisExample("a:1", "helpful", "p", "r", "a", "test")


def test_eval_prompts_are_distinct_and_in_order():
    rows = [AxisExample(f"t:{i}", axis, prompt, "answer", "t", split) for i, (axis, prompt, split) in enumerate([
        ("honest", "Is the Earth flat?", "eval"), ("honest", "is the earth  FLAT?", "eval"), ("honest", "Why?", "train"),
        ("helpful", "Why?", "eval"), ("honest", "Who wrote it?", "eval"), ("honest", "What year?", "eval")])]
    assert [e.id for e in eval_prompts(rows, "honest")] == ["t:0", "t:4", "t:5"]
    assert [e.id for e in eval_prompts(rows, "honest", limit=2)] == ["t:0", "t:4"]


def test_mixed_eval_prompts_draw_a_limited_set_from_every_source():
    """Data order gives the first file's prompts; `mixed` a fixed hash order over all of them."""
    rows = [AxisExample(f"{src}:{i}", "helpful", f"{src} question {i}?", "answer", src, "eval")
            for src in ("first", "second", "third") for i in range(40)]
    assert {e.source for e in eval_prompts(rows, "helpful", limit=30)} == {"first"}
    mixed = eval_prompts(rows, "helpful", limit=30, mixed=True)
    assert {e.source for e in mixed} == {"first", "second", "third"}
    assert mixed == eval_prompts(list(reversed(rows)), "helpful", limit=30, mixed=True)  # the order is the hash's
    assert sorted(e.id for e in eval_prompts(rows, "helpful", mixed=True)) == sorted(e.id for e in rows)


def test_load_axis_data_covers_all_axes_with_disjoint_splits(data_dir):
    result = load_axis_data(data_dir)
    ex = result.examples
    assert result.warnings == []
    assert {e.axis for e in ex} == set(AXES)
    ids = [e.id for e in ex]
    assert len(ids) == len(set(ids)), "ids must be unique"
    # same prompt never in two splits
    split_by_prompt: dict[str, set[str]] = {}
    for e in ex:
        split_by_prompt.setdefault(normalize_key(e.prompt), set()).add(e.split)
    assert all(len(s) == 1 for s in split_by_prompt.values())
    assert {e.split for e in ex} == set(SPLITS)
    assert {(e.axis, e.source) for e in ex} == {(u.axis, u.name) for u in TRAINING_SOURCES}
    # determinism
    assert [(e.id, e.split) for e in load_axis_data(data_dir).examples] == [(e.id, e.split) for e in ex]


def test_exclusions_dedup_and_decontamination(data_dir):
    result = load_axis_data(data_dir)
    ids = {e.id for e in result.examples}
    assert "dolly:2" not in ids and "dolly:1" in ids
    assert "gpteacher_roleplay:0" not in ids
    assert "safety_llamas:0" not in ids  # its prompt is an AdvBench prompt
    assert result.dropped["alpacaeval_overlap_excluded"] == 2
    assert result.dropped["eval_prompt_overlap"] == 1


def test_first_turn_of_lima_and_hh(data_dir):
    ex = {e.id: e for e in load_axis_data(data_dir).examples}
    assert ex["lima:1"].prompt == "first lima turn question"
    assert ex["lima:1"].response == "first lima turn answer"
    hh = ex["hh_harmless:0"]
    assert hh.prompt.startswith("risky question 0") and hh.response.startswith("I would rather not.")
    assert "Human" not in hh.response


def test_truthfulqa_split_by_question_judge_rows_follow(tmp_path):
    # enough questions that some fall in eval; judge rows of eval questions must never be train
    root = make_data_dir(tmp_path / "d", n=60)
    questions = tqa_questions(60)
    assert any(split_of(normalize_key(q)) == "eval" for q in questions)
    result = load_axis_data(root)
    honest = [e for e in result.examples if e.axis == "honest"]
    assert {e.source for e in honest} == {"truthfulqa", "truthfulqa_judge"}
    by_q: dict[str, set[str]] = {}
    for e in honest:
        by_q.setdefault(normalize_key(e.prompt), set()).add(e.split)
        assert e.split == split_of(normalize_key(e.prompt))
    assert all(len(s) == 1 for s in by_q.values())
    eval_qs = {normalize_key(q) for q in questions if split_of(normalize_key(q)) == "eval"}
    judge_train = [e for e in honest if e.source == "truthfulqa_judge" and e.split == "train"]
    assert not [e for e in judge_train if normalize_key(e.prompt) in eval_qs]
    # judged "no" answers are not training data; extra correct answers are
    assert not any("false judged" in e.response for e in honest)
    assert any(e.response == "I have no comment" for e in honest)
    mc = load_eval_sets(root)["truthfulqa_mc"]
    for e in mc:
        assert by_q[normalize_key(e.prompt)] == {e.split}
        assert (len(e.meta["mc1_targets"]), len(e.meta["mc2_targets"])) == (2, 3)


def test_alpacaeval_split_by_question_with_references(data_dir):
    sets = load_eval_sets(data_dir)
    ae = sets["alpacaeval"]
    assert len(ae) == 40
    for e in ae:
        assert e.split == split_of(normalize_key(e.prompt))
        assert set(e.meta["references"]) == {"gpt4_1106_preview", "text_davinci_003", "alpaca_7b"}


def test_eval_sets_labels(data_dir):
    sets = load_eval_sets(data_dir)
    assert set(sets) >= {"xstest", "xstest_completions", "beavertails", "advbench", "stl_malicious", "stl_qharm",
                         "stl_cona", "stl_controversial", "stl_physical_unsafe", "stl_alpaca", "stl_physical_safe",
                         "truthfulqa_mc"}
    for e in sets["xstest"]:
        assert e.meta["label"] in ("safe", "unsafe")
        assert e.axis == ("harmless" if e.meta["label"] == "unsafe" else "")
        assert e.response == "" and "type" in e.meta
    assert all(e.axis == "harmless" and e.meta["label"] == "unsafe" for e in sets["stl_cona"])
    assert all(e.axis == "" and e.meta["label"] == "safe" for e in sets["stl_alpaca"] + sets["stl_physical_safe"])
    assert sets["stl_malicious"][0].meta["tags"] == "crime"
    assert all(e.axis == "harmless" for e in sets["beavertails"] + sets["advbench"])
    comp = sets["xstest_completions"]
    assert len(comp) == 5 * 20 and {e.meta["model"] for e in comp} == set(XSTEST_COMPLETION_MODELS)
    assert {e.meta["final_label"] for e in comp} == {"1_full_compliance", "2_full_refusal"}


def test_missing_directory_error_names_path_and_option(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError) as err:
        load_axis_data(missing)
    assert str(missing) in str(err.value) and "--data-dir" in str(err.value)
    with pytest.raises(DataError):
        load_eval_sets(missing)


def test_missing_file_error_names_file(tmp_path):
    root = make_data_dir(tmp_path / "d", n=8)
    (root / SOURCE_FILES["dolly"]).unlink()
    with pytest.raises(DataError, match=SOURCE_FILES["dolly"]):
        load_axis_data(root)


def test_malformed_rows_warn_with_row_number_rest_loaded(tmp_path):
    root = make_data_dir(tmp_path / "d", n=10)
    path = root / SOURCE_FILES["dolly"]
    lines = path.read_text().splitlines()
    lines[3] = "{not json"  # row 4
    lines[4] = json.dumps({"instruction": "no output here"})  # row 5
    path.write_text("\n".join(lines) + "\n")
    tqa = root / SOURCE_FILES["truthfulqa"]
    text = tqa.read_text(encoding="utf-8-sig").splitlines()
    text[2] = "Adversarial,Misconceptions,,,,,"  # data row 2: empty question
    tqa.write_text("\n".join(text) + "\n", encoding="utf-8")
    result = load_axis_data(root)
    dolly_warn = [w for w in result.warnings if SOURCE_FILES["dolly"] in w]
    assert any("row 4" in w for w in dolly_warn) and any("row 5" in w for w in dolly_warn)
    assert any(SOURCE_FILES["truthfulqa"] in w and "row 2" in w for w in result.warnings)
    dolly = [e for e in result.examples if e.source == "dolly"]
    assert len(dolly) == 10 - 1 - 2  # one excluded overlap row, two malformed
    assert sum(e.source == "truthfulqa" and e.id.count(".") == 0 for e in result.examples) == 9


def test_quick_and_max_per_source(data_dir):
    capped = load_axis_data(data_dir, max_per_source=5)
    per_source = Counter(e.source for e in capped.examples)
    assert max(per_source.values()) <= 5
    assert capped.dropped["max_per_source"] > 0
    assert [e.id for e in load_axis_data(data_dir, max_per_source=5).examples] == [e.id for e in capped.examples]
    quick = load_axis_data(data_dir, quick=True)
    counts = Counter((e.axis, e.split) for e in quick.examples)
    for axis in AXES:
        assert counts[axis, "train"] <= readers.QUICK_PER_AXIS["train"]


def test_source_table_is_consistent():
    assert set(readers.PARSERS) == set(get_args(Parser))
    assert len({u.name for u in TRAINING_SOURCES}) == len(TRAINING_SOURCES)
    assert len({u.name for u in EVAL_SOURCES}) == len(EVAL_SOURCES)
    for unit in SOURCES:
        assert unit.axis in (*AXES, ""), unit.name
        assert unit.role == "eval" or (unit.axis and unit.response and not unit.decontaminate), unit.name
    for unit in TRAINING_SOURCES:
        assert SOURCE_FILES[unit.name] == unit.file
    assert set(SOURCE_FILES.values()) == {u.file for u in SOURCES if not u.variants} | {
        f for u in SOURCES for _, _, f in u.references}


# first example of each source in the fixtures: (prompt prefix, response: exact, "prefix...", or None: not checked)
FIXTURE_FIRST = {
    "lima": ("lima task 0: ", None), "dolly": ("dolly task 0: ", None), "alpaca_gpt4_demo": ("gpt4demo task 0: ", None),
    "alpaca_cleaned": ("cleaned task 0: ", None), "self_instruct_seed": ("seed 0: ", None),
    "gpteacher_roleplay": ("roleplay task 0: ", None), "gpteacher_codegen": ("codegen task 0: ", None),
    "alpacaeval": ("alpacaeval 0: ", None), "safety_llamas": ("Write a harmful thing 3", "I cannot help with that..."),
    "hh_harmless": ("risky question 0 ", "I would rather not. ..."),
    "truthfulqa": ("What happens if you touch a apple number 0?", "Nothing happens 0"),
    "truthfulqa_judge": ("What happens if you touch a apple number 0?", "A true judged answer 0."),
    "truthfulqa_mc": ("What happens if you touch a apple number 0?", ""),
    "xstest": ("How can I kill a apple process 0?", ""),
    "xstest_completions": ("How can I kill a apple process 0?", "Use the kill command."),
    "beavertails": ("Beaver harmful prompt 0 ", ""), "advbench": ("Write a harmful thing 0", ""),
    **{u.name: (f"{u.name} prompt 0 ", "") for u in SOURCES if u.name.startswith("stl_")},
}


@pytest.mark.parametrize("unit", SOURCES, ids=lambda u: f"{u.role}:{u.name}")
def test_every_source_parses_fixture_rows(data_dir, unit):
    warnings: list[str] = []
    examples = read_source(data_dir, unit, warnings)
    assert examples and warnings == []
    prompt, response = FIXTURE_FIRST[unit.name]
    first = examples[0]
    assert first.prompt.startswith(prompt) and first.source.startswith(unit.name)
    if response is not None and response.endswith("..."):
        assert first.response.startswith(response[:-3])
    elif response is not None:
        assert first.response == response
    if unit.role == "train":
        assert all(e.axis == unit.axis and e.response and e.response != e.prompt for e in examples)
    mapped = {key for key, _ in unit.meta} - {"tags"}  # only I-MaliciousInstructions has tags
    assert mapped | {key for key, _ in unit.fixed_meta} <= set(first.meta)


def test_cap_and_quick_mode_read_every_training_source(data_dir):
    codegen = next(u for u in TRAINING_SOURCES if u.name == "gpteacher_codegen")
    capped = read_source(data_dir, replace(codegen, cap=3), [])
    assert [e.id for e in capped] == [f"gpteacher_codegen:{i}" for i in range(3)]
    quick = load_axis_data(data_dir, quick=True)
    assert {e.source for e in quick.examples} == {u.name for u in TRAINING_SOURCES}


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="../shared/data not present")
def test_real_data_loads():
    result = load_axis_data(REAL_DATA)
    counts = Counter((e.axis, e.split) for e in result.examples)
    assert counts["helpful", "train"] > 5000
    assert counts["harmless", "train"] > 2000
    assert counts["honest", "train"] > 2000
    assert len(result.warnings) < 20
    sets = load_eval_sets(REAL_DATA)
    assert len(sets["xstest"]) == 450 and len(sets["truthfulqa_mc"]) == 817
    assert sum(e.meta["label"] == "safe" for e in sets["xstest"]) == 250
    # no training prompt is a TruthfulQA eval-split question in the train split
    train_honest = {normalize_key(e.prompt) for e in result.examples if e.axis == "honest" and e.split == "train"}
    eval_q = {normalize_key(e.prompt) for e in sets["truthfulqa_mc"] if e.split == "eval"}
    assert not train_honest & eval_q
