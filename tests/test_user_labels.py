"""Routers and calibration trained on a user's own labelled prompt file (`train router|calibrate --prompts`)."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import LABELLED_PROMPTS, build_checkpoint

from alignx_demo.modeling import load_mocae
from alignx_demo.training.labels import LabelsError, labelled_examples
from alignx_demo.training.pipeline import run_stages
from alignx_demo.training.router import RouterConfig, training_rows


def write_labels(path, rows) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "axis", "response", "source"])
        writer.writerows(rows)


def many_rows(n: int = 30) -> list[list[str]]:
    """n variants of each labelled prompt (distinct text, so they hash to different splits), some with an answer."""
    return [[f"{prompt} {i}", axis, "Water boils at 100 degrees." if i % 3 == 0 else "", source]
            for i in range(n) for prompt, axis, source in LABELLED_PROMPTS]


def test_a_labelled_file_becomes_split_examples_and_bad_rows_are_named(tmp_path):
    path = tmp_path / "labels.csv"
    write_labels(path, [*many_rows(), ["Hurt people?", "", "", "x"], ["Why?", "helpfull", "", "x"]])
    examples, problems = labelled_examples(path)
    assert len(examples) == len(LABELLED_PROMPTS) * 30 and {e.split for e in examples} == {"train", "calibration", "eval"}
    assert any("no axis label" in p for p in problems) and any("helpfull" in p for p in problems) and len(problems) == 2
    assert {e.source for e in examples} == {"alpaca", "advbench", "tqa"} and any(e.response for e in examples)
    write_labels(path, [r for r in many_rows() if r[1] != "honest"])
    with pytest.raises(LabelsError, match="no train-split row labelled honest"):
        labelled_examples(path)


def test_router_and_calibration_train_on_your_labels_end_to_end(tmp_path, tokenizer):
    out = build_checkpoint(tmp_path / "ckpt", tokenizer)
    path = tmp_path / "labels.csv"
    write_labels(path, many_rows())
    examples, _ = labelled_examples(path)
    rows = training_rows(tokenizer, examples, RouterConfig(), labelled=True)  # your rows as given, answers kept
    assert rows == [e for e in examples if e.split == "train"] and any(e.axis == "harmless" and e.response for e in rows)
    summary = run_stages(["router", "calibrate"], data_dir=tmp_path / "no-data", out=out, quick=True, threads=1,
                         progress=False, prompts=path)
    assert summary["router"]["examples"] == len(rows)
    calibration = json.loads((out / "logs" / "calibration_summary.json").read_text())
    assert calibration["prompts"] == sum(e.split == "calibration" for e in examples) and calibration["shift_prompts"] == {}
    loaded = load_mocae(out, load_in_4bit=False)  # trained routers and a calibration fitted for them
    assert loaded.mocae.calibration is not None
    with pytest.raises(ValueError, match="--prompts trains the router and the calibration only"):
        run_stages(["experts"], data_dir=tmp_path, out=out, quick=True, prompts=path)
