"""Research tools: routing analysis over a prompt set, counterfactual attribution, settle curves,
the trace format and its diff, and their commands — all on one tiny checkpoint."""

from __future__ import annotations

import argparse
import contextlib
import json

import pytest
import torch
from conftest import LABELLED_PROMPTS as PROMPTS
from conftest import build_checkpoint

from alignx_demo.analysis.attribution import (
    EFFECT_FLOOR,
    LOCAL_VARIANTS,
    VARIANTS,
    attribute,
    scope_effects,
    top_effect,
    variant_weights,
)
from alignx_demo.analysis.commands import add_commands
from alignx_demo.analysis.failures import analyze_prompts
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
    assert overall["ci_methods"]["accuracy"] == "wilson" and overall["ece_ci95"] is not None
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
    limited = analyze_prompts(loaded, None, rows, batch_size=2, max_rows=5, generate_tokens=0)
    assert (limited["analysed"], limited["stopped"], limited["not_analysed"], limited["rows_given"]) == (5, "max_rows", 7, 12)
    timed = analyze_prompts(loaded, None, rows, batch_size=2, max_seconds=0.0, generate_tokens=0)
    assert (timed["analysed"], timed["stopped"]) == (2, "max_seconds") and "time limit" in timed["notices"][0]


def test_analysis_reports_both_levels_by_default_and_names_each_figures_level(loaded):
    from alignx_demo.analysis import statistics
    from alignx_demo.analysis.failures import DEFAULT_GENERATE_TOKENS, level_figures, reliability_csv, slices_csv

    result = analyze_prompts(loaded, None, ROWS, batch_size=3)
    assert result["generate_tokens"] == DEFAULT_GENERATE_TOKENS > 0 and set(result["levels"]) == {"prompt", "generation"}
    assert all(0 < r["generation"]["tokens"] <= DEFAULT_GENERATE_TOKENS for r in result["rows"])
    prompt_line, generation_line = (next(line for line in result["summary"] if line.startswith(start))
                                    for start in ("Prompt level", "Generation level"))
    for level, line in (("prompt", prompt_line), ("generation", generation_line)):
        rows = [r if level == "prompt" else r["generation"] for r in result["rows"]]
        conf, correct = [x["confidence"] for x in rows], [x["correct"] for x in rows]
        overall = result["levels"][level]["slices"]["all"]["all"]
        assert overall["ece"] == pytest.approx(statistics.ece(conf, correct), abs=1e-6)  # the one ECE definition
        assert f"accuracy {overall['accuracy']:.3f}" in line and f"ECE {overall['ece']:.3f}" in line
        bins = result["levels"][level]["reliability"]
        assert len(bins) == statistics.N_BINS + 1 and sum(b["count"] for b in bins) == len(ROWS)
        cross = result["levels"][level]["cross"]["axis × source"]
        assert cross["columns"] == ["axis", "source"] and cross["cells"]["helpful"]["alpaca"]["n"] == 2
    assert f"up to {DEFAULT_GENERATE_TOKENS} generated tokens" in generation_line
    assert [row["level"] for row in level_figures(result)] == ["prompt", "generation"]
    from alignx_demo.analysis import commands
    assert commands.DEFAULT_GENERATE_TOKENS == DEFAULT_GENERATE_TOKENS  # the CLI's default is the library's
    skipped = analyze_prompts(loaded, None, ROWS, generate_tokens=0)
    assert set(skipped["levels"]) == {"prompt"} and "rows" in skipped
    assert any(line.startswith("Generation level") and "generate_tokens = 0" in line for line in skipped["summary"])
    lines = slices_csv(result).splitlines()
    assert lines[0].startswith("level,group,value,n,correct,accuracy,accuracy_low,accuracy_high,ece,ece_low,ece_high")
    assert any(line.startswith("generation,axis × source,helpful × alpaca,2,") for line in lines)
    assert len(reliability_csv(result).splitlines()) == 1 + 2 * (statistics.N_BINS + 1)


def test_cut_and_cleaned_prompts_are_counted_flagged_and_sliced(loaded):
    from alignx_demo.analysis.failures import analysis_csv, changed_value
    from alignx_demo.generation import MAX_PROMPT_CHARS, context_length

    context = context_length(loaded.mocae.model)
    long_prompt = "Please summarise this text for me. " + "bread " * (2 * context)
    rows = [*ROWS, {"prompt": long_prompt, "axis": "helpful", "source": "alpaca"},
            {"prompt": "Why\x07 is the sky blue?", "axis": "honest", "source": "tqa"},
            {"prompt": "x" * (MAX_PROMPT_CHARS + 5), "axis": "helpful", "source": "alpaca"}]
    result = analyze_prompts(loaded, None, rows, generate_tokens=4)
    changes = [r["changes"] for r in result["rows"]]
    assert changes[:len(ROWS)] == [[]] * len(ROWS)
    assert changes[len(ROWS):] == [["cut_to_context"], ["cleaned"], ["cut_to_context", "cut_to_length"]]
    assert result["prompt_changes"] == {"changed": 3, "cut_to_context": 2, "cut_to_length": 1, "cleaned": 1}
    assert any(f"2 of {len(rows)} analysed prompts were cut from the left" in n for n in result["notices"])
    assert any("3 of 9 analysed prompts were changed" in line for line in result["summary"])
    for level in ("prompt", "generation"):
        sliced = result["levels"][level]["slices"]["prompt_changed"]
        assert {k: v["n"] for k, v in sliced.items()} == {"none": 6, "cut_to_context": 1, "cleaned": 1,
                                                          "cut_to_context+cut_to_length": 1}
        crossed = result["levels"][level]["cross"]["source × prompt_changed"]["cells"]  # whose figures rest on cut prompts
        assert crossed["alpaca"]["cut_to_context"]["n"] == 1 and crossed["alpaca"]["none"]["n"] == 2
    import csv
    import io

    table = list(csv.reader(io.StringIO(analysis_csv(result))))
    column = table[0].index("prompt_changed")
    assert [line[column] for line in table[1:]] == ["none"] * len(ROWS) + [changed_value(c) for c in changes[len(ROWS):]]


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
    result = attribute(loaded, None, trace, local=True)
    assert result["routing"]["axis_prior"] == pytest.approx((0.6, 0.4, 0.0))
    for token in result["tokens"]:
        assert abs(token["remove"]["honest"]) < 1e-5 and abs(token["local"]["remove"]["honest"]) < 1e-5
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


def test_each_scope_runs_in_one_forward_and_weights_match_the_trace(loaded):
    trace = greedy_trace(loaded, PROMPTS[1][0], 6)
    ids = torch.tensor([[t["id"] for t in trace["tokens"]]])
    with torch.no_grad():
        before = loaded.mocae(input_ids=ids).logits
    shapes = []
    record = lambda _m, args, kwargs, _out: shapes.append(tuple(kwargs["input_ids"].shape))  # noqa: E731
    handle = loaded.mocae.model.register_forward_hook(record, with_kwargs=True)
    try:
        result = attribute(loaded, None, trace, local=True)
    finally:
        handle.remove()
    n = len(trace["tokens"])
    assert shapes == [(len(VARIANTS), n), (len(LOCAL_VARIANTS) * 6, n - 1)]  # run, then local (left-padded prefixes)
    assert result["forwards"] == 2 and result["batch"] == {"run": len(VARIANTS), "local": len(LOCAL_VARIANTS) * 6}
    assert result["trace_weights_max_abs_diff"] < 1e-5
    for scope, summary, rows in (("run", result["summary"], result["tokens"]),
                                 ("local", result["summary"]["local"], [t["local"] for t in result["tokens"]])):
        decided = [t for t in rows if t["top_effect"] is not None]
        assert summary["scope"] == scope and len(rows) == 6 and summary["tokens_expert_helps"] == len(decided) > 0
        agree = [tok["top_weight"] == t["top_effect"] for tok, t in zip(result["tokens"], rows) if t["top_effect"]]
        assert summary["top_weight_is_top_effect"] == sum(agree) / len(agree)
        for t in rows:  # a top-effect expert helps; without one, no expert's effect reaches the floor
            best = max(t["effect"].values())
            assert (t["top_effect"] is not None) == (best >= EFFECT_FLOOR) == (t["outcome"] == "expert_helps")
    with torch.no_grad():
        assert torch.equal(loaded.mocae(input_ids=ids).logits, before), "the routing override must be undone"
    w = torch.softmax(torch.randn(len(VARIANTS), 4, 3), -1)
    v = variant_weights(w)
    torch.testing.assert_close(v.sum(-1), torch.ones(len(VARIANTS), 4))
    assert torch.equal(v[0], w[0]) and bool((v[1, :, 0] == 0).all()) and torch.equal(v[4], torch.tensor([[1.0, 0, 0]] * 4))


def only_at(position: int, variant: tuple[str, int | None]):
    """A routing transform applying one variant (`variant_weights`) at one position of a one-row batch."""
    def transform(_layer: int, w: torch.Tensor) -> torch.Tensor:
        changed = variant_weights(w[:, position : position + 1], (variant,))
        return torch.cat([w[:, :position], changed, w[:, position + 1 :]], dim=1)
    return transform


def test_local_effect_changes_the_routing_of_the_producing_position_only(loaded):
    trace = greedy_trace(loaded, PROMPTS[0][0], 5)
    result = attribute(loaded, None, trace, local=True)
    ids = torch.tensor([[t["id"] for t in trace["tokens"]]])
    mocae = loaded.mocae
    with torch.no_grad(), mocae.routed(CALIBRATED):
        actual = torch.log_softmax(mocae(input_ids=ids).logits[0].float(), -1)
    for token in result["tokens"][::2]:
        p = token["position"] - 1  # the position whose forward produced the token
        for kind, k in LOCAL_VARIANTS:
            with torch.no_grad(), mocae.transformed(only_at(p, (kind, k))), mocae.routed(CALIBRATED):
                changed = torch.log_softmax(mocae(input_ids=ids).logits[0].float(), -1)
            assert torch.equal(changed[:p], actual[:p]), "every earlier position must route as in the actual run"
            expected = float(changed[p, token["id"]] - actual[p, token["id"]])
            assert token["local"][kind][AXES[k]] == pytest.approx(expected, abs=1e-5)
    gap = max(abs(t["local"]["effect"][a] - t["effect"][a]) for t in result["tokens"] for a in AXES)
    assert gap > 1e-3, "the local scope should differ from the whole-run scope"


def test_per_layer_effects_have_one_value_per_layer_and_add_up_to_the_run_effect(loaded):
    trace = greedy_trace(loaded, PROMPTS[2][0], 4)
    ids = [t["id"] for t in trace["tokens"]]
    n_prompt = sum(t["is_prompt"] for t in trace["tokens"])
    mocae = loaded.mocae
    helpful = AXES.index("helpful")

    def no_helpful_past_layer_0(layer: int, w: torch.Tensor) -> torch.Tensor:  # helpful routes at layer 0 only
        return w if layer == 0 else variant_weights(w, (("remove", helpful),) * w.shape[0])

    def generated_logp(*transforms) -> torch.Tensor:  # log-prob of each generated token under these transforms
        with torch.no_grad(), contextlib.ExitStack() as stack, mocae.routed(CALIBRATED):
            for transform in (no_helpful_past_layer_0, *transforms):
                stack.enter_context(mocae.transformed(transform))
            logp = torch.log_softmax(mocae(input_ids=torch.tensor([ids])).logits[0, n_prompt - 1 : -1].float(), -1)
        return logp.gather(-1, torch.tensor(ids[n_prompt:])[:, None])[:, 0]

    with mocae.transformed(no_helpful_past_layer_0):
        result = attribute(loaded, None, ids, prompt_length=n_prompt, routing=CALIBRATED, layers=True)
    harmless = AXES.index("harmless")
    for layer in range(mocae.n_layers):  # against removing harmless at that one layer by hand
        removed = generated_logp(lambda at, w, layer=layer: variant_weights(w, (("remove", harmless),)) if at == layer
                                 else w)
        got = torch.tensor([t["layer_effect"]["harmless"][layer] for t in result["tokens"]])
        torch.testing.assert_close(got, generated_logp() - removed, atol=1e-5, rtol=0)
    assert result["forwards"] == 2 and "local" not in result["batch"]
    assert result["batch"]["layers"] == mocae.n_layers * len(AXES) >= 2 * len(AXES)
    means = result["summary"]["layers"]["mean_effect"]
    assert result["summary"]["layers"]["scope"] == "run" and {a: len(v) for a, v in means.items()} == dict.fromkeys(
        AXES, mocae.n_layers)
    for token in result["tokens"]:
        per_layer = token["layer_effect"]
        assert {a: len(v) for a, v in per_layer.items()} == dict.fromkeys(AXES, mocae.n_layers)
        assert sum(per_layer["helpful"]) == pytest.approx(token["effect"]["helpful"], abs=1e-5)
        assert all(abs(e) < 1e-5 for e in per_layer["helpful"][1:])
    assert max(abs(t["layer_effect"]["helpful"][0]) for t in result["tokens"]) > 1e-3
    for a in AXES:
        assert means[a] == pytest.approx([sum(t["layer_effect"][a][layer] for t in result["tokens"]) / 4
                                          for layer in range(mocae.n_layers)], abs=1e-9)


def test_no_expert_helps_is_no_top_effect_and_no_disagreement():
    effects = torch.tensor([[-0.038, -0.002, -0.206],  # every expert only hurts: formerly "harmless" by argmax
                            [0.0004, -0.0002, 0.0],  # nothing moves it by the floor
                            [-0.01, 0.02, 0.15]], dtype=torch.float64).T  # honest helps most
    assert top_effect(effects[:, 0]) == (None, "no_expert_helps")
    rows, summary = scope_effects("local", -effects, torch.zeros_like(effects), ["helpful", "harmless", "honest"])
    assert [(r["top_effect"], r["outcome"], r["agree"]) for r in rows] == [
        (None, "no_expert_helps", None), (None, "no_effect", None), ("honest", "expert_helps", True)]
    assert rows[0]["effect"]["harmless"] == pytest.approx(-0.002)
    assert (summary["tokens"], summary["tokens_expert_helps"], summary["tokens_no_expert_helps"],
            summary["tokens_no_effect"]) == (3, 1, 1, 1)
    assert summary["top_weight_is_top_effect"] == 1.0, "a token no expert helps is not a disagreement"
    assert summary["top_effect_counts"] == {"helpful": 0, "harmless": 0, "honest": 1}
    _, none_helps = scope_effects("run", -effects[:, :2], torch.zeros(3, 2), ["helpful", "helpful"])
    assert none_helps["top_weight_is_top_effect"] is None and none_helps["tokens_expert_helps"] == 0


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
    assert d["aligned_prefix"] == n_prompt + 1 and d["first_divergence"]["index"] == n_prompt + 1
    assert d["aligned"] == len(a["tokens"]) - 1 and d["summary"]["n_divergences"] == 1  # the runs meet again after it
    assert d["first_divergence"]["is_prompt_a"] is False and "diverge" in d["notes"][0]


def synthetic_trace(ids: list[int], n_prompt: int, flip: set[int] = frozenset()) -> dict:
    """A valid trace of these token ids; tokens whose id is in `flip` are routed to harmless, the others to helpful."""
    from alignx_demo.generation import TRACE_SCHEMA

    tokens = []
    for i, t in enumerate(ids):
        w = [0.2, 0.7, 0.1] if t in flip else [0.6, 0.3, 0.1]
        tokens.append({"text": f"<{t}>", "id": t, "position": i, "is_prompt": i < n_prompt, "weights": dict(zip(AXES, w)),
                       "layers": [w, w], "entropy": 0.5, "top_expert": AXES[w.index(max(w))]})
    return {"schema": TRACE_SCHEMA, "prompt": "p", "model": "m", "settings": {"routing": {"mode": "soft", "calibrated": True}},
            "axes": list(AXES), "notices": [], "finish_reason": "length",
            "text": "".join(t["text"] for t in tokens[n_prompt:]), "tokens": tokens}


def test_diff_traces_realigns_after_each_divergence_and_reports_every_stretch():
    a = synthetic_trace([1, 2, 3, 4, 5, 6, 7, 8, 9], 3)
    b = synthetic_trace([1, 2, 3, 4, 50, 6, 7, 80, 81, 9], 3, flip={6})  # part at 5, meet at 6 7, part at 8, meet at 9
    d = diff_traces(a, b)
    assert d["first_divergence"]["index"] == 4 and d["first_divergence"]["b"] == {"id": 50, "text": "<50>"}
    assert (d["aligned_prefix"], d["aligned"]) == (4, 7)
    spans = [(s["kind"], s["a"]["start"], s["a"]["end"], s["a"]["ids"], s["b"]["start"], s["b"]["end"], s["b"]["ids"])
             for s in d["divergences"]]
    assert spans == [("replaced", 4, 5, [5], 4, 5, [50]), ("replaced", 7, 8, [8], 7, 9, [80, 81])]
    assert d["divergences"][1]["b"]["positions"] == [7, 8] and not d["divergences"][1]["in_prompt"]
    assert [(r["index"], r["index_b"], r["position_b"]) for r in d["tokens"][4:]] == [(5, 5, 5), (6, 6, 6), (8, 9, 9)]
    assert [r["after_divergence"] for r in d["tokens"]] == [False] * 4 + [True] * 3
    flipped = d["tokens"][4]  # token 6: helpful in a, harmless in b, compared although it comes after a divergence
    assert flipped["routed_differs"] and flipped["delta"] == {"helpful": -0.4, "harmless": 0.4, "honest": 0.0}
    assert d["routed_differs"] == [5] and d["summary"]["n_routed_differs"] == 1 and d["summary"]["max_abs_delta"] == 0.4
    assert (d["summary"]["n_divergences"], d["summary"]["tokens_only_a"], d["summary"]["tokens_only_b"]) == (2, 2, 3)
    assert "diverge at index 4" in d["notes"][0] and "meet again" in d["notes"][0]
    tail = diff_traces(a, synthetic_trace([1, 2, 3, 4, 5, 6], 3))  # b stops early: one stretch, only in a
    assert tail["aligned"] == 6 and [s["kind"] for s in tail["divergences"]] == ["only_a"] and "do not meet again" in tail["notes"][0]


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
    assert (report["rows_given"], report["rejected"], report["usable"]) == (len(ROWS) + 1, 1, len(ROWS))
    assert table.read_text().splitlines()[0].startswith("index,row,prompt,axis,source,routed")
    printed = capsys.readouterr().out
    assert "7 rows given: 6 analysed, 1 rejected" in printed and "Generation level" in printed
    few = tmp_path / "few.csv"  # 4 data rows, two of them rejected
    few.write_text("prompt,axis\nHow do I bake bread?,helpful\n,honest\nIs it true?,honest\nWhy?,helpfull\n")
    assert run("analyze", "--model", ckpt, "--no-4bit", "--prompts", few, "--out", out, "--generate-tokens", 0,
               "--slices-csv", tmp_path / "s.csv", "--reliability-csv", tmp_path / "r.csv", "--no-progress") == 0
    report = json.loads(out.read_text())
    assert (report["rows_given"], report["analysed"], report["rejected"], len(report["problems"])) == (4, 2, 2, 2)
    assert set(report["levels"]) == {"prompt"} and (tmp_path / "s.csv").exists() and (tmp_path / "r.csv").exists()
    att = tmp_path / "att.json"
    assert run("attribute", "--model", ckpt, "--no-4bit", "--prompt", PROMPTS[0][0], "--max-new-tokens", 4, "--per-layer",
               "--local", "--out", att) == 0
    saved = json.loads(att.read_text())
    assert "scope run: " in (printed := capsys.readouterr().out) and "scope local: " in printed
    assert saved["forwards"] == 3 and all(len(t["layer_effect"]["honest"]) == 2 for t in saved["tokens"])
    assert all(t["local"]["scope"] == "local" for t in saved["tokens"])
    assert saved["batch"]["run"] == 7 and len(saved["tokens"]) == len([t for t in saved["trace"]["tokens"] if not t["is_prompt"]])
    diff = tmp_path / "d.json"
    assert run("diff-traces", att, att, "--out", diff) == 0
    assert json.loads(diff.read_text())["first_divergence"] is None


# the research tools' speed benchmark ------------------------------------------------------------------------

def test_research_bench_prompts_are_distinct_labelled_and_interleaved():
    from collections import Counter

    from alignx_demo.analysis.research_bench import benchmark_prompts

    rows = benchmark_prompts(200)
    assert len(rows) == 200 and len({r["prompt"] for r in rows}) == 200
    assert [r["axis"] for r in rows[:6]] == [*AXES, *AXES] and min(Counter(r["axis"] for r in rows).values()) >= 66
    assert len(benchmark_prompts(10_000)) == 204  # every template × topic, once


def test_research_bench_times_both_tools_on_the_sizes_asked(ckpt):
    from alignx_demo.analysis.research_bench import ANALYZE_TARGET_S, ATTRIBUTE_TARGET_S, measure_research_targets

    result = measure_research_targets(ckpt, n_prompts=12, trace_tokens=8, repeats=2)
    analyzed, attributed = result["analyze"], result["attribute"]
    assert analyzed["prompts"] == 12 and analyzed["target_s"] == ANALYZE_TARGET_S
    assert analyzed["met"] == (analyzed["seconds"] <= ANALYZE_TARGET_S) and analyzed["prompts_per_s"] > 0
    assert attributed["tokens"] == 8 and attributed["forwards"] == 1 and attributed["target_s"] == ATTRIBUTE_TARGET_S
    assert attributed["met"] == (attributed["seconds"] <= ATTRIBUTE_TARGET_S) and attributed["first_seconds"] > 0
    assert result["quantized"] is False and len(result["load_average_1m"]) == 2 and result["model"].startswith("ckpt (llama")


def test_attribution_routes_a_prompt_scope_model_as_its_streamed_run(loaded, monkeypatch):
    """With context_scope "prompt" the answer reads the prompt's summary only: the teacher-forced forwards mark
    the prompt span, so the recomputed weights are the streamed trace's in both scopes."""
    monkeypatch.setattr(loaded.mocae.config, "context_scope", "prompt")
    trace = greedy_trace(loaded, PROMPTS[1][0], 5)
    result = attribute(loaded, None, trace, local=True)
    assert result["trace_weights_max_abs_diff"] < 1e-5
