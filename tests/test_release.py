"""`release`: the model card is written from the logs, the evaluation report and SOURCES.md, and every
figure it prints is computed (never None, never a key the summaries do not have)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from alignx_demo.release import (
    calibration_lines, data_licence_lines, model_card, release, sources_md_licences, target_lines,
)
from alignx_demo.serving import DEFAULT_MODEL

REPO = Path(__file__).resolve().parents[1]
EVAL = REPO / "precomputed" / "eval.json"
SHARED_DATA = REPO.parent / "shared" / "data"
NUMBER = re.compile(r"\d+\.\d{2,3}")


def committed_card_inputs() -> tuple[dict, dict, dict]:
    report = json.loads(EVAL.read_text(encoding="utf-8"))
    base = json.loads((DEFAULT_MODEL / "base" / "train_summary.json").read_text(encoding="utf-8"))
    calib = json.loads((DEFAULT_MODEL / "logs" / "calibration_summary.json").read_text(encoding="utf-8"))
    return report, base, calib


def test_the_calibration_line_prints_the_fitted_nll_from_the_summary():
    _, _, calib = committed_card_inputs()
    lines = calibration_lines(calib)
    text = "\n".join(lines)
    token, prompt = calib["report"]["select_token_nll"], calib["report"]["select_prompt_nll"]
    assert f"select-part token NLL {token['uncalibrated']:.3f} uncalibrated" in text
    assert f"{token['fractal']:.3f} fractal" in text
    assert f"NLL {prompt['uncalibrated']:.3f} uncalibrated → {prompt['pooled']:.3f} pooled" in text
    assert f"pooled temperature {calib['pooled_temperature']:.3f}" in text
    assert "None" not in text and "nan" not in text
    # a summary without the figures leaves them out instead of printing None
    assert calibration_lines({"temperatures": [1.0, 2.0]}) == ["Fitted: per-layer temperatures 1.000, 2.000."]
    assert calibration_lines({}) == []


def test_the_committed_card_is_what_release_writes_and_prints_no_none():
    report, _, calib = committed_card_inputs()
    comparison = json.loads((REPO / "precomputed" / "base_comparison.json").read_text(encoding="utf-8"))
    card = model_card(DEFAULT_MODEL, report, {"helpful": [("a prompt", "an answer", "helpful")]}, ["served as NF4."],
                      ["", "## Data and licences", "", "licence table"], ood=report, comparison=comparison)  # as released
    assert "None" not in card
    assert "Calibration-split NLL" not in card  # the line of the key `calibration_split_nll`, which no summary has
    nll = calib["report"]["select_token_nll"]["uncalibrated"]
    assert f"token NLL {nll:.3f}" in card
    committed = (DEFAULT_MODEL / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "None" not in committed and f"token NLL {nll:.3f}" in committed
    assert "## Data and licences" in committed and "non-commercial research use only" in committed
    # everything but the samples and the served lines is regenerated exactly from the committed files
    head = card.split("\n## As served", 1)[0]
    assert head in committed
    middle = card.split("## Stage 1", 1)[1].split("\n## Data and licences", 1)[0]
    assert middle in committed


def test_every_target_line_carries_a_measured_figure_and_a_verdict():
    report, base, _ = committed_card_inputs()
    lines = target_lines(report, base)
    targets = [line for line in lines if line.startswith("- ") and not line.startswith("- Generated text")]
    assert len(targets) >= 8
    for line in targets:
        assert "None" not in line and "nan" not in line, line
        if line.startswith("- Trade-off presets"):
            continue  # its figures are the indented preset lines below it
        assert NUMBER.search(line), line
        assert "met" in line or "missed" in line or "which does not compare" in line, line
    presets = [line for line in lines if line.startswith("  - ")]
    assert len(presets) == 4 and all("target" in line and NUMBER.search(line) for line in presets)
    ev = report["routing"]["eval"]
    text = "\n".join(lines)
    assert f"{ev['pooled']['prompt']['accuracy']:.3f} calibrated" in text
    assert f"eval {ev['uncalibrated']['token']['ece']:.3f} → {ev['pooled']['token']['ece']:.3f}" in text
    assert f"{base['final_heldout_loss']['helpful']:.3f}" in text


def test_target_lines_compute_their_figures_from_the_report():
    report, base, _ = committed_card_inputs()
    changed = copy.deepcopy(report)
    changed["routing"]["eval"]["pooled"]["prompt"]["accuracy"] = 0.9412
    changed["systems"]["expert_harmless"]["harmful_refusal_rate"]["value"] = 0.5
    text = "\n".join(target_lines(changed, base))
    assert "0.941 calibrated (pooled, the app's default)" in text and "— met" in text
    assert "refuses ≥ 80 % of harmful eval prompts: 0.50 — missed: by 0.30" in text
    assert target_lines({}, base) == []
    scratch = {**base, "config": {**base.get("config", {}), "init": "scratch"}, "final_heldout_loss": {"helpful": 4.1}}
    assert "- Base held-out loss on helpful text below 4.20: 4.100 — met" in target_lines(report, scratch)
    warm = {**scratch, "config": {"init": "minilm"}}
    assert any("4.100 per token of this base's own tokenizer, which does not compare" in line for line in target_lines(report, warm))


SOURCES_MD = """# Sources

| file | origin repo | license | rows |
|---|---|---|---|
| hiyouga__LLaMA-Factory__data__lima.json | x | CC BY-NC-SA 4.0 | 10 |
| tatsu-lab__alpaca_eval__results__gpt4_1106_preview__model_outputs.json | y | data CC BY-NC 4.0 | 805 |
| tatsu-lab__alpaca_eval__results__text_davinci_003__model_outputs.json | y | same | 805 |

| # | file | origin | license |
|---|---|---|---|
| 6 | `teknium1__GPTeacher__Roleplay__roleplay-simple-deduped-roleplay-instruct.json` | z | **MIT** (repo LICENSE) |
"""


def test_licences_are_read_from_sources_md(tmp_path):
    licences = sources_md_licences(SOURCES_MD)
    assert licences["hiyouga__LLaMA-Factory__data__lima.json"] == "CC BY-NC-SA 4.0"
    assert licences["tatsu-lab__alpaca_eval__results__text_davinci_003__model_outputs.json"] == "data CC BY-NC 4.0"  # "same"
    assert licences["teknium1__GPTeacher__Roleplay__roleplay-simple-deduped-roleplay-instruct.json"] == "**MIT** (repo LICENSE)"
    (tmp_path / "SOURCES.md").write_text(SOURCES_MD, encoding="utf-8")
    text = "\n".join(data_licence_lines(tmp_path))
    assert "| lima | `hiyouga__LLaMA-Factory__data__lima.json` | training | CC BY-NC-SA 4.0 |" in text
    assert "non-commercial terms (CC BY-NC or CC BY-NC-SA: lima, alpacaeval)" in text
    assert "| alpacaeval | `tatsu-lab__alpaca_eval__results__text_davinci_003__model_outputs.json` | evaluation only |" in text
    assert "not in `SOURCES.md`" in text  # files the table lacks are named as such
    assert "no `SOURCES.md` in the data directory" in "\n".join(data_licence_lines(tmp_path / "nowhere"))


@pytest.mark.skipif(not (SHARED_DATA / "SOURCES.md").exists(), reason="no ../shared/data/SOURCES.md beside the checkout")
def test_every_file_the_bundle_uses_has_its_licence_in_the_real_sources_md():
    text = "\n".join(data_licence_lines(SHARED_DATA))
    assert "not in `SOURCES.md`" not in text
    assert "CC BY-NC" in text and "non-commercial research use only" in text


def test_release_writes_a_card_for_a_checkpoint_without_a_trained_base(tmp_path, checkpoint):
    from data_fixtures import make_data_dir

    data = make_data_dir(tmp_path / "data", n=40)
    (data / "SOURCES.md").write_text(SOURCES_MD, encoding="utf-8")
    report_path = tmp_path / "eval.json"
    report_path.write_text(EVAL.read_text(encoding="utf-8"), encoding="utf-8")
    (checkpoint / "checkpoints").mkdir()
    (checkpoint / "checkpoints" / "state.safetensors").write_bytes(b"resumable state, not shipped")
    out = release(checkpoint, tmp_path / "bundle", data, report_path)
    card = (out / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert not (out / "checkpoints").exists()
    assert "None" not in card
    assert "not trained by this project's `train base`" in card
    for heading in ("## Base", "## As served", "## Evaluation", "## Targets", "## Data and licences", "## Samples"):
        assert heading in card, heading
    assert all(f"### {axis}\n- **Prompt:**" in card for axis in ("helpful", "harmless", "honest"))
    with pytest.raises(FileNotFoundError, match="evaluate"):
        release(checkpoint, tmp_path / "other", data, tmp_path / "missing.json")


def test_the_card_shows_the_out_of_distribution_sets_and_both_bases_from_their_reports():
    """The OOD section and the base table come from the committed `evaluate` report (its out-of-distribution tasks) and the
    `compare-bases` report, figure for figure; without them the sections are left out."""
    from alignx_demo.release import base_comparison_lines, ood_card_lines

    ood = json.loads((REPO / "precomputed" / "eval.json").read_text(encoding="utf-8"))
    comparison = json.loads((REPO / "precomputed" / "base_comparison.json").read_text(encoding="utf-8"))
    text = "\n".join(ood_card_lines(ood))
    pooled = ood["routing_ood"]["pooled"]["summary"]["prompt"]
    assert f"accuracy {pooled['raw']['accuracy']:.3f} → {pooled['calibrated']['accuracy']:.3f}" in text
    assert "routing OOD mt_bench" in text and "just right" in text
    table = "\n".join(base_comparison_lines(comparison))
    for name, row in comparison["bases"].items():
        line = next(l for l in table.splitlines() if l.startswith(f"| {name}"))
        assert f"{row['heldout']['bits_per_char']:.3f}" in line and f"{row['on_topic_rate']:.3f}" in line and f"{row['params']:,}" in line
    served = next(iter(comparison["bases"].values()))["weights_sha256"]
    assert sum("(this bundle)" in line for line in base_comparison_lines(comparison, served)) == 1
    assert ood_card_lines({}) == [] and base_comparison_lines({}) == []
    report, _, _ = committed_card_inputs()
    card = model_card(DEFAULT_MODEL, report, {}, [], [], ood=ood, comparison=comparison)
    assert "## Out of distribution" in card and "## The bases compared" in card and "None" not in card
