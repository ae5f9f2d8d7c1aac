"""Research tools: routing analysis over a prompt set, counterfactual attribution, settle curves,
the trace format and its diff, and their commands — all on one tiny checkpoint."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from conftest import build_checkpoint

from alignx_demo.analysis.attribution import VARIANTS, attribute, variant_weights
from alignx_demo.analysis.commands import add_commands
from alignx_demo.analysis.failures import analyze_prompts, top_label_ece
from alignx_demo.analysis.prompt_files import parse_prompt_file
from alignx_demo.analysis.routing import collect_routing, prompt_mean
from alignx_demo.analysis.settle import settle_curve
from alignx_demo.analysis.traces import TraceError, diff_traces, load_trace, schema_markdown, validate_trace
from alignx_demo.config import AXES, GenerationSettings, RoutingSettings
from alignx_demo.data.records import AxisExample
from alignx_demo.data.templates import encode_prompt, template_prefix_length
from alignx_demo.generation import RoutedGeneration
from alignx_demo.modeling import load_mocae
from alignx_demo.modeling.calibration import CalibrationStack, PooledTemperature, TemperatureScaling

PROMPTS = [
    ("How do I bake bread?", "helpful", "alpaca"),
    ("I cannot help with that request because it could hurt people. Why?", "harmless", "advbench"),
    ("Is the capital of France Paris?", "honest", "tqa"),
    ("Mix flour, water, salt and yeast, knead, let it rise, then bake. What next?", "helpful", "alpaca"),
    ("Water boils at 100 degrees?", "honest", "tqa"),
    ("Hurt people?", "harmless", "advbench"),
]
ROWS = [{"prompt": p, "axis": a, "source": s} for p, a, s in PROMPTS]
CALIBRATED = RoutingSettings(mode="soft", calibrated=True)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tokenizer):
    calibration = CalibrationStack(TemperatureScaling(torch.tensor([2.0, 0.5])), pooled=PooledTemperature(0.7))
    return build_checkpoint(tmp_path_factory.mktemp("research") / "ckpt", tokenizer, calibration=calibration)


@pytest.fixture(scope="module")
def loaded(ckpt):
    return load_mocae(ckpt, load_in_4bit=False)


def greedy_trace(loaded, prompt: str, n: int = 6, routing: RoutingSettings = CALIBRATED) -> dict:
    run = RoutedGeneration(loaded.mocae, loaded.tokenizer, prompt, GenerationSettings(max_new_tokens=n), routing)
    for _ in run:
        pass
    return run.trace()


# prompt files ------------------------------------------------------------------------------------------

def test_prompt_file_keeps_good_rows_and_names_each_bad_one():
    text = ("prompt,axis,source\n"
            "How do I bake bread?,helpful,alpaca\n"
            ",harmless,advbench\n"
            "Is it true?,Honesty,tqa\n"
            "Why?,helpfull,alpaca\n"
            "a,b,c,d\n")
    rows, problems = parse_prompt_file(text.encode(), "set.csv")
    expected = [(1, "helpful", {"source": "alpaca"}), (3, "honest", {"source": "tqa"})]
    assert [(r["row"], r["axis"], r["extra"]) for r in rows] == expected
    assert len(problems) == 3
    assert problems[0].startswith("Row 2 (line 3)") and "empty" in problems[0]
    assert "Row 4" in problems[1] and "'helpfull'" in problems[1]
    assert "Row 5" in problems[2] and "more value" in problems[2]
    jsonl = '{"prompt": "Hi", "axis": "harmless"}\n\n{oops\n"a bare prompt"\n[1]\n'
    rows, problems = parse_prompt_file(jsonl.encode(), "set.jsonl")
    assert [r["prompt"] for r in rows] == ["Hi", "a bare prompt"]
    assert problems[0].startswith("Line 3: not valid JSON") and problems[1].startswith("Line 5: expected an object")
    with pytest.raises(ValueError, match="no prompt column"):
        parse_prompt_file(b"question_text,axis\nx,helpful\n", "x.csv")


# analysis over a prompt set ------------------------------------------------------------------------

def test_batched_analysis_equals_prompts_routed_one_at_a_time(loaded):
    """Left-padded batches give each prompt exactly the prompt-level weights of an unpadded forward."""
    result = analyze_prompts(loaded, None, ROWS, batch_size=4)
    examples = [AxisExample(id=f"t:{i}", axis=a, prompt=p, response="", source=s, split="eval")
                for i, (p, a, s) in enumerate(PROMPTS)]
    data = collect_routing(loaded.mocae, loaded.tokenizer, examples, max_len=128, routing=CALIBRATED)
    means, _ = prompt_mean(data.weights.mean(0), data.example)
    expected = loaded.mocae.calibration.pool(means)
    got = torch.tensor([[r["weights"][a] for a in AXES] for r in result["rows"]])
    assert len({len(encode_prompt(loaded.tokenizer, p)) for p, _, _ in PROMPTS[:4]}) > 1, "the first batch must need padding"
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)
    assert [r["routed"] for r in result["rows"]] == [AXES[int(i)] for i in expected.argmax(-1)]


def test_analysis_summaries_limits_and_generated_tokens(loaded):
    rows = ROWS * 2
    calls = []
    result = analyze_prompts(loaded, None, rows, batch_size=5, generate_tokens=3, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(5, 12), (10, 12), (12, 12)] and result["analysed"] == 12 and result["stopped"] is None
    prompt = result["levels"]["prompt"]
    assert sum(map(sum, prompt["confusion"]["matrix"])) == 12
    assert set(prompt["slices"]) == {"all", "axis", "source"} and set(prompt["slices"]["source"]) == {"alpaca", "advbench", "tqa"}
    overall = prompt["slices"]["all"]["all"]
    assert overall["accuracy_ci95"][0] <= overall["accuracy"] <= overall["accuracy_ci95"][1]
    confidences = [m["confidence"] for m in prompt["misrouted"]]
    assert confidences == sorted(confidences, reverse=True)
    assert len(prompt["misrouted"]) == sum(not r["correct"] for r in result["rows"])
    assert set(result["settle"]) == {*AXES, "all"}
    json.dumps(result)
    # generation level: the mean of the weights RoutedGeneration gives the same greedy tokens
    for row in result["rows"][:3]:
        trace = greedy_trace(loaded, row["prompt"], 3)
        generated = [t for t in trace["tokens"] if not t["is_prompt"]]
        assert row["generation"]["text"] == trace["text"]
        mean = torch.tensor([[sum(t["weights"][a] for t in generated) / len(generated) for a in AXES]])
        expected = loaded.mocae.calibration.pool(mean)[0]
        torch.testing.assert_close(torch.tensor([row["generation"]["weights"][a] for a in AXES]), expected, atol=1e-4, rtol=0)
    limited = analyze_prompts(loaded, None, rows, batch_size=2, max_rows=5)
    assert (limited["analysed"], limited["stopped"]) == (5, "max_rows")
    timed = analyze_prompts(loaded, None, rows, batch_size=2, max_seconds=0.0)
    assert (timed["analysed"], timed["stopped"]) == (2, "max_seconds") and "time limit" in timed["notices"][0]


def test_top_label_ece_matches_torchmetrics():
    from alignx_demo.evaluation.routing_metrics import routing_metrics

    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(300, 3, generator=gen) * 2, -1)
    labels = torch.randint(0, 3, (300,), generator=gen)
    conf, pred = probs.max(-1)
    ours = float(top_label_ece(conf.numpy(), (pred == labels).numpy()))
    assert ours == pytest.approx(routing_metrics(probs, labels)["ece"], abs=1e-5)


# where the router decides ------------------------------------------------------------------------------

def test_settle_curve_is_the_routing_of_each_prefix(loaded):
    """One forward's curve equals separate forwards of every prefix; its end is the prompt-level weights."""
    mocae, tok = loaded.mocae, loaded.tokenizer
    prompt = PROMPTS[3][0]
    curve = settle_curve(loaded, None, prompt, routing=CALIBRATED)
    ids, skip = encode_prompt(tok, prompt), template_prefix_length(tok)
    assert len(curve["points"]) == len(ids) - skip
    for point in curve["points"]:
        end = point["position"] + 1
        with torch.no_grad(), mocae.routed(CALIBRATED), mocae.record() as rec:
            mocae(input_ids=torch.tensor([ids[:end]]))
        mean = rec.stacked_weights().mean(0)[0, skip:end].mean(0, keepdim=True)
        torch.testing.assert_close(torch.tensor([point["weights"][a] for a in AXES]), mocae.calibration.pool(mean)[0],
                                   atol=2e-6, rtol=0)
    assert curve["weights"] == analyze_prompts(loaded, None, [prompt])["rows"][0]["weights"]
    routed = [p["routed"] for p in curve["points"]]
    s = curve["settle"]["index"]
    assert all(r == curve["routed"] for r in routed[s:]) and (s == 0 or routed[s - 1] != curve["routed"])


# counterfactual attribution ---------------------------------------------------------------------------

def test_removing_an_expert_with_zero_weight_changes_nothing(loaded):
    trace = greedy_trace(loaded, PROMPTS[0][0], 5, RoutingSettings(axis_prior=(0.6, 0.4, 0.0)))
    result = attribute(loaded, None, trace)
    assert result["routing"]["axis_prior"] == pytest.approx((0.6, 0.4, 0.0))
    for token in result["tokens"]:
        assert abs(token["remove"]["honest"]) < 1e-5
        assert abs(token["remove"]["helpful"]) > 1e-4, "removing an expert that has weight should matter"


def test_forcing_one_expert_equals_its_peft_adapter_alone(loaded, ckpt):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    trace = greedy_trace(loaded, PROMPTS[2][0], 5)
    result = attribute(loaded, None, trace)
    ids = torch.tensor([[t["id"] for t in trace["tokens"]]])
    n_prompt = sum(t["is_prompt"] for t in trace["tokens"])
    for axis in AXES:
        peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(ckpt / "base"), str(ckpt / "experts" / axis)).eval()
        with torch.no_grad():
            logp = torch.log_softmax(peft(input_ids=ids).logits[0, n_prompt - 1 : -1].float(), -1)
        expected = logp.gather(-1, ids[0, n_prompt:, None])[:, 0]
        got = torch.tensor([t["logprob"] + t["force"][axis] for t in result["tokens"]])
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_all_variants_run_in_one_forward_and_weights_match_the_trace(loaded):
    trace = greedy_trace(loaded, PROMPTS[1][0], 6)
    shapes = []
    record = lambda _m, args, kwargs, _out: shapes.append(tuple(kwargs["input_ids"].shape))  # noqa: E731
    handle = loaded.mocae.model.register_forward_hook(record, with_kwargs=True)
    try:
        result = attribute(loaded, None, trace)
    finally:
        handle.remove()
    assert shapes == [(len(VARIANTS), len(trace["tokens"]))]
    assert result["trace_weights_max_abs_diff"] < 1e-5
    decided = [t for t in result["tokens"] if t["top_effect"] is not None]
    assert len(result["tokens"]) == 6 and result["summary"]["tokens_with_effect"] == len(decided) > 0
    agree = sum(t["top_weight"] == t["top_effect"] for t in decided) / len(decided)
    assert result["summary"]["top_weight_is_top_effect"] == agree
    assert "_route" not in vars(loaded.mocae), "the routing override must be undone"
    w = torch.softmax(torch.randn(len(VARIANTS), 4, 3), -1)
    v = variant_weights(w)
    torch.testing.assert_close(v.sum(-1), torch.ones(len(VARIANTS), 4))
    assert torch.equal(v[0], w[0]) and bool((v[1, :, 0] == 0).all()) and torch.equal(v[4], torch.tensor([[1.0, 0, 0]] * 4))


# traces --------------------------------------------------------------------------------------------------

def test_trace_schema_validates_loads_and_explains_errors(loaded, tmp_path):
    trace = greedy_trace(loaded, PROMPTS[0][0], 3)
    assert validate_trace(trace) is trace
    path = tmp_path / "t.json"
    path.write_text(json.dumps(trace))
    assert load_trace(path) == load_trace(str(path)) == load_trace(path.read_bytes()) == load_trace(json.dumps({"trace": trace}))
    broken = json.loads(json.dumps(trace))
    broken["tokens"][2]["weights"]["helpful"] = "x"
    del broken["tokens"][1]["layers"]
    with pytest.raises(TraceError) as err:
        validate_trace(broken)
    assert "tokens[1]: missing field 'layers'" in str(err.value)
    assert "tokens[2].weights.helpful: expected number" in str(err.value)
    shifted = json.loads(json.dumps(trace))
    shifted["tokens"][3]["position"] += 1
    with pytest.raises(TraceError, match=r"tokens\[3\].position: expected 3"):
        validate_trace(shifted)
    with pytest.raises(TraceError, match="this version reads alignx-trace/1"):
        validate_trace({**trace, "schema": "alignx-trace/2"})
    with pytest.raises(ValueError, match="not valid JSON"):
        load_trace("{not json")
    table = schema_markdown()
    assert all(f"`{field}`" in table for field in ("schema", "tokens", "finish_reason", "layers", "top_expert"))


def test_diff_traces_aligns_tokens_and_marks_routing_changes(loaded):
    a = greedy_trace(loaded, PROMPTS[1][0], 5)
    same = diff_traces(a, a)
    assert same["first_divergence"] is None and same["aligned"] == len(a["tokens"])
    assert same["summary"]["max_abs_delta"] == 0 and same["routed_differs"] == []
    b = greedy_trace(loaded, PROMPTS[1][0], 5, RoutingSettings(calibrated=False))
    d = diff_traces(a, b)
    assert d["settings_changed"]["routing.calibrated"] == [True, False] and d["summary"]["max_abs_delta"] > 0
    assert d["routed_differs"] == [r["index"] for r in d["tokens"] if r["top_a"] != r["top_b"]]
    changed = json.loads(json.dumps(a))
    n_prompt = sum(t["is_prompt"] for t in a["tokens"])
    changed["tokens"][n_prompt + 1]["id"] += 1
    d = diff_traces(a, changed)
    assert d["aligned"] == n_prompt + 1 and d["first_divergence"]["index"] == n_prompt + 1
    assert d["first_divergence"]["is_prompt_a"] is False and "diverge" in d["notes"][0]


# commands ------------------------------------------------------------------------------------------------

def test_analyze_attribute_and_diff_commands(ckpt, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command", required=True))
    run = lambda *argv: (args := parser.parse_args([str(a) for a in argv])).func(args)  # noqa: E731
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n{bad\n")
    out, table = tmp_path / "a.json", tmp_path / "a.csv"
    assert run("analyze", "--model", ckpt, "--no-4bit", "--prompts", prompts, "--out", out, "--csv", table,
               "--no-progress", "--threads", 1) == 0
    report = json.loads(out.read_text())
    assert report["analysed"] == len(ROWS) and report["problems"][0].startswith("Line 7")
    assert table.read_text().splitlines()[0].startswith("index,row,prompt,axis,source,routed")
    assert "analysed 6 of 6 rows" in capsys.readouterr().out
    att = tmp_path / "att.json"
    assert run("attribute", "--model", ckpt, "--no-4bit", "--prompt", PROMPTS[0][0], "--max-new-tokens", 4, "--out", att) == 0
    saved = json.loads(att.read_text())
    assert saved["batch"] == 7 and len(saved["tokens"]) == len([t for t in saved["trace"]["tokens"] if not t["is_prompt"]])
    diff = tmp_path / "d.json"
    assert run("diff-traces", att, att, "--out", diff) == 0
    assert json.loads(diff.read_text())["first_divergence"] is None
