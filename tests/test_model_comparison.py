"""Two models on one prompt set (`analysis.failures.compare_models`, `analyze --against`): known answers for
McNemar's exact test, the paired accuracy interval and the paired ECE difference, then the command end to end
on two tiny checkpoints."""

from __future__ import annotations

import argparse
import json

import pytest
from conftest import build_checkpoint

from alignx_demo.analysis import statistics
from alignx_demo.analysis.commands import add_commands
from alignx_demo.analysis.failures import compare_models, comparison_csv
from alignx_demo.config import AXES

# 20 labelled prompts: 10 right by both, 8 right by A only (McNemar's b), 1 right by B only (c), 1 wrong by both
RIGHT_A = [True] * 10 + [True] * 8 + [False] + [False]
RIGHT_B = [True] * 10 + [False] * 8 + [True] + [False]


def fake_result(model: str, right: list[bool], confidence: float, unlabelled: int = 0) -> dict:
    """An `analyze_prompts` result as `compare_models` reads it: rows at both levels, every prompt at `confidence`."""
    rows = []
    for i, ok in enumerate([*right, *[None] * unlabelled]):
        axis = None if ok is None else AXES[i % 3]
        routed = AXES[i % 3] if ok in (True, None) else AXES[(i + 1) % 3]
        level = {"weights": {a: confidence if a == routed else (1 - confidence) / 2 for a in AXES}, "routed": routed,
                 "confidence": confidence, "correct": None if ok is None else ok}
        rows.append({"index": i, "row": i + 1, "prompt": f"prompt {i}", "axis": axis, "extra": {"source": "s"}, **level,
                     "generation": {"text": "x", "tokens": 2, **level}})
    return {"model": model, "routing": {"mode": "soft", "calibrated": True, "calibration": None}, "generate_tokens": 2,
            "analysed": len(rows), "rows": rows, "levels": {"prompt": {}, "generation": {}}}


def test_mcnemar_exact_p_value_is_the_binomial_tail_of_the_discordant_pairs():
    test = statistics.mcnemar_exact(RIGHT_A, RIGHT_B)
    assert (test["b"], test["c"], test["discordant"]) == (8, 1, 9)
    assert test["p_value"] == pytest.approx(20 / 512, abs=1e-15)  # 2·P(X ≤ 1), X ~ Bin(9, 1/2) = 2·10/512
    assert statistics.mcnemar_exact([True, False], [True, False])["p_value"] == 1.0  # no discordant pair


def test_paired_accuracy_interval_matches_newcombes_published_example():
    # Fagerland, Lydersen & Laake (2017), ch. 8, Cavo et al. (2012): 59 both, 6 second only, 16 first only, 80 neither
    first = [True] * 59 + [False] * 6 + [True] * 16 + [False] * 80
    second = [True] * 59 + [True] * 6 + [False] * 16 + [False] * 80
    d = statistics.paired_accuracy_difference(first, second)
    assert d["value"] == pytest.approx(-10 / 161, abs=1e-6) and d["ci_method"] == "newcombe"
    assert d["ci95"] == pytest.approx([-0.1186, -0.0046], abs=6e-5)
    agree = statistics.paired_accuracy_difference([True] * 10, [True] * 10)
    assert agree["value"] == 0 and agree["ci95"][0] < -0.2 and agree["ci95"][1] > 0.2  # never [0, 0] on 10 rows


def test_compare_models_gives_the_known_paired_answer_at_both_levels():
    a, b = fake_result("A", RIGHT_A, 0.9, unlabelled=2), fake_result("B", RIGHT_B, 0.75, unlabelled=2)
    c = compare_models(a, b)
    assert c["paired"] == 22 and c["only_a"] == c["only_b"] == 0 and not c["notices"] and set(c["levels"]) == {"prompt", "generation"}
    for level in ("prompt", "generation"):
        s = c["levels"][level]
        assert (s["paired"], s["labelled"]) == (22, 20)
        assert (s["mcnemar"]["b"], s["mcnemar"]["c"]) == (8, 1) and s["mcnemar"]["p_value"] == pytest.approx(0.0390625)
        assert s["changes"] == {"both correct": 10, "both wrong": 1, "became correct": 1, "became wrong": 8}
        assert (s["a"]["accuracy"], s["b"]["accuracy"]) == (0.9, 0.55)
        assert s["accuracy_difference"]["value"] == pytest.approx(-0.35)
        # A: confidence 0.9 at accuracy 0.9 → ECE 0; B: confidence 0.75 at accuracy 0.55 → ECE 0.2 (one bin each)
        assert s["a"]["ece"] == pytest.approx(0.0, abs=1e-9) and s["b"]["ece"] == pytest.approx(0.2)
        ece = s["ece_difference"]
        assert ece["value"] == pytest.approx(0.2) and ece["n"] == 20 and ece["ci_method"] in ("BCa", "percentile")
        assert ece["ci95"][0] <= ece["value"] <= ece["ci95"][1]
        assert s["routed_changed"] == 9 and sum(s["transitions"].values()) == 9
        assert s["mean_confidence_change"] == pytest.approx(-0.15)
    row = c["rows"][10]["levels"]["prompt"]  # the first prompt B gets wrong
    assert (row["correct_a"], row["correct_b"], row["change"], row["routed_changed"]) == (True, False, "became wrong", True)
    assert c["rows"][-1]["levels"]["prompt"]["change"] is None  # unlabelled: paired, not counted as right or wrong
    assert any("McNemar exact p = 0.03906" in line for line in c["summary"])
    table = comparison_csv(c).splitlines()
    assert table[0].startswith("index,row,prompt,axis,source,routed_a,routed_b") and "gen_change" in table[0]
    assert len(table) == 23


def test_compare_models_refuses_different_prompt_files_and_says_what_differs():
    a, b = fake_result("A", RIGHT_A, 0.9), fake_result("B", RIGHT_B, 0.75)
    b["rows"][3]["prompt"] = "another prompt"
    with pytest.raises(ValueError, match="row 4 is 'prompt 3'"):
        compare_models(a, b)
    b = fake_result("B", RIGHT_B[:15], 0.75)
    b["generate_tokens"] = 4
    del b["levels"]["generation"]
    c = compare_models(a, b)
    assert (c["paired"], c["only_a"], c["only_b"]) == (15, 5, 0) and set(c["levels"]) == {"prompt"}
    assert c["settings_changed"] == {"generate_tokens": [2, 4]} and len(c["notices"]) == 3


def test_analyze_against_compares_two_checkpoints_on_the_same_prompts(tmp_path, tokenizer, capsys):
    from test_research_tools import ROWS

    first = build_checkpoint(tmp_path / "a", tokenizer, seed=0)
    second = build_checkpoint(tmp_path / "b", tokenizer, seed=3)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command", required=True))
    out, table = tmp_path / "c.json", tmp_path / "c.csv"
    args = parser.parse_args([str(a) for a in ("analyze", "--model", first, "--against", second, "--no-4bit", "--prompts",
                                               prompts, "--out", out, "--csv", table, "--generate-tokens", 2,
                                               "--no-progress", "--threads", 1)])
    assert args.func(args) == 0
    report = json.loads(out.read_text())
    analyses = report.pop("analyses")
    assert report["paired"] == len(ROWS) and report["a"]["model"].startswith("a (llama") and report["b"]["model"].startswith("b (")
    for level in ("prompt", "generation"):
        s = report["levels"][level]
        own = {side: analyses[side]["levels"][level]["slices"]["all"]["all"] for side in "ab"}
        rows = [r["levels"][level] for r in report["rows"]]
        assert s["mcnemar"]["b"] == sum(r["correct_a"] and not r["correct_b"] for r in rows)
        assert s["mcnemar"]["c"] == sum(r["correct_b"] and not r["correct_a"] for r in rows)
        assert s["a"]["accuracy"] == own["a"]["accuracy"] and s["b"]["accuracy"] == own["b"]["accuracy"]
        assert s["ece_difference"]["value"] == pytest.approx(own["b"]["ece"] - own["a"]["ece"], abs=2e-6)
    assert table.read_text().splitlines()[0].startswith("index,row,prompt,axis,source,routed_a")
    printed = capsys.readouterr().out
    assert "McNemar exact p =" in printed and "Prompt level" in printed and "Generation level" in printed
    args = parser.parse_args([str(a) for a in ("analyze", "--model", first, "--against", second, "--prompts", prompts,
                                               "--out", out, "--slices-csv", tmp_path / "s.csv")])
    with pytest.raises(ValueError, match="describe one model"):
        args.func(args)
