"""`precompute`: the artefacts, the regimes behind the Axis Collapse map, and how the app reads them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from app_fixtures import REPO
from safetensors import safe_open

from alignx_demo.analysis.artefacts import ARTEFACT_VERSION, FEATURES_FILE, FILES, load_artefacts, model_fingerprint
from alignx_demo.analysis.map_prompts import MAP_PROMPTS
from alignx_demo.analysis.metrics import knn_purity
from alignx_demo.analysis.regimes import REGIMES, ROUTED, RegimeSet, Representation, candidates, prompt_span
from alignx_demo.config import AXES
from alignx_demo.modeling import load_mocae


def test_map_prompts_are_our_own_and_balanced():
    assert tuple(MAP_PROMPTS) == AXES
    for axis, prompts in MAP_PROMPTS.items():
        assert len(prompts) == 40, axis
        assert len(set(prompts)) == 40 and all(p.strip() for p in prompts)
    all_prompts = [p for ps in MAP_PROMPTS.values() for p in ps]
    assert len(set(all_prompts)) == len(all_prompts)


def test_artefacts_are_versioned_and_complete(trained_run, trained_precomputed):
    folder = trained_precomputed
    run, _ = trained_run
    for key, name in FILES.items():
        data = json.loads((folder / name).read_text())
        assert data["version"] == ARTEFACT_VERSION, name
        assert data["command"].startswith("python -m alignx_demo precompute") and "--quick" in data["command"]
        assert data["created"] and data["model"].startswith("run (")
        assert data["model_fingerprint"] == model_fingerprint(run) and data["model_path"] == str(run)
    map_data = json.loads((folder / FILES["map"]).read_text())
    assert map_data["projection"] == "pca" and "PCA" in map_data["projection_note"]
    assert set(map_data["regimes"]) == set(REGIMES) and "base_instructed" in REGIMES
    chosen = map_data["feature"]["representation"]
    n = len(map_data["prompts"])
    assert n == 3 * 12 and {p["axis"] for p in map_data["prompts"]} == set(AXES)
    for regime, info in map_data["regimes"].items():
        assert len(info["coords"]) == n and all(len(c) == 2 for c in info["coords"])
        assert info["sentence"] and ("rout" in info["sentence"]) == (regime in ROUTED), regime
    mocae = map_data["regimes"]["mocae"]
    assert len(mocae["misrouted"]) == n and set(mocae["routed_axis"]) <= set(AXES)
    with safe_open(str(folder / FEATURES_FILE), "pt") as handle:
        meta = handle.metadata()
        assert meta["version"] == str(ARTEFACT_VERSION) and meta["representation"] == chosen
        assert meta["model_fingerprint"] == model_fingerprint(run) and meta["command"] == map_data["command"]
        for regime in REGIMES:
            assert handle.get_tensor(regime).dtype == torch.float16 and handle.get_tensor(regime).shape[0] == n
    collapse = json.loads((folder / FILES["collapse"]).read_text())
    table = collapse["representation"]["measured"]
    assert collapse["representation"]["chosen"] == chosen and chosen in table and len(table) > 2
    assert chosen in collapse["representation"]["why"] and collapse["summary"]
    for regime in REGIMES:
        row = collapse["regimes"][regime]
        assert -1 <= row["silhouette"] <= 1 and 0 <= row["knn_purity"] <= 1
        assert row["silhouette"] == pytest.approx(table[chosen]["regimes"][regime]["silhouette"])
        assert row["sentence"] == map_data["regimes"][regime]["sentence"]
        if regime != "sequential_sft":
            assert row["forgetting"] is None and row["forgetting_note"].startswith("not measured"), regime
    assert collapse["regimes"]["stage1_experts"]["reference"] == "base_instructed"
    forgotten = collapse["regimes"]["sequential_sft"]["forgetting"]  # measured by `train baselines`
    assert set(forgotten) == set(AXES[:-1])
    summary = json.loads((run / "logs" / "baselines_summary.json").read_text())
    assert {a: v["forgetting"] for a, v in forgotten.items()} == summary["sequential_sft"]["forgetting"]
    assert 0 <= collapse["regimes"]["mocae"]["routing_accuracy"] <= 1
    reliability = json.loads((folder / FILES["reliability"]).read_text())
    eval_split = reliability["splits"]["eval"]
    assert set(eval_split) == {"uncalibrated", "calibrated"}
    assert sum(b["count"] for b in eval_split["calibrated"]["bins"]) == eval_split["calibrated"]["prompt_metrics"]["n"]
    examples = json.loads((folder / FILES["examples"]).read_text())
    assert examples["traces"] and {t["settings"]["routing"]["calibrated"] for t in examples["traces"]} == {True, False}


def test_baseline_regime_equals_the_peft_adapter_and_is_restored(trained_run):
    from peft import PeftModel
    from torch.nn import functional as F
    from transformers import AutoModelForCausalLM

    run, _ = trained_run
    loaded = load_mocae(run, load_in_4bit=False)
    regimes = RegimeSet.from_checkpoint(loaded.mocae, loaded.tokenizer, run)
    assert regimes.available == list(REGIMES)
    before = {n: (m.lora_A.clone(), m.lora_B.clone()) for n, m in loaded.mocae.expert_modules.items()}
    prompt = "How do I bake bread?"
    ids, start, end = prompt_span(loaded.tokenizer, prompt, None, regimes.max_len)
    rep = Representation("prompt_mean", loaded.mocae.n_layers - 1)
    for regime in ("joint_sft", "sequential_sft"):
        ours = regimes.features(regime, [prompt], [None], [rep]).features[rep.name]
        peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(run / "base"), str(run / "baselines" / regime)).eval()
        with torch.no_grad():
            hidden = peft(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        last_input = hidden[loaded.mocae.n_layers - 1][0, start:end]  # input of the last decoder layer, user tokens
        expected = F.rms_norm(last_input, (last_input.shape[-1],), eps=1e-6).mean(0)
        assert torch.allclose(ours[0], expected, atol=1e-4), regime
    for name, module in loaded.mocae.expert_modules.items():
        assert torch.equal(module.lora_A, before[name][0]) and torch.equal(module.lora_B, before[name][1])


def test_checkpoint_without_baselines_reports_those_regimes_missing(checkpoint, tokenizer):
    loaded = load_mocae(checkpoint, load_in_4bit=False)
    regimes = RegimeSet.from_checkpoint(loaded.mocae, loaded.tokenizer, checkpoint)
    assert set(regimes.missing) == {"joint_sft", "sequential_sft"}
    assert "train baselines" in regimes.missing["joint_sft"]
    found = regimes.features("base", ["hello", "bread"], [None, None], candidates(loaded.mocae.n_layers))
    assert all(f.shape[0] == 2 for f in found.features.values()) and torch.allclose(found.weights.sum(-1), torch.ones(2))


def test_knn_purity_of_separated_clusters():
    x = torch.cat([torch.randn(10, 4) * 0.01 + c for c in (0.0, 5.0, 10.0)])
    labels = torch.tensor([0] * 10 + [1] * 10 + [2] * 10)
    assert knn_purity(x, labels, k=5) == 1.0


def test_missing_stale_and_corrupt_artefacts_become_notices(tmp_path):
    empty = load_artefacts(tmp_path / "nothing")
    assert all(empty.get(k) is None for k in FILES)
    assert "missing" in empty.notice("map") and "precompute" in empty.notice("map")
    folder = tmp_path / "pre"
    folder.mkdir()
    (folder / FILES["map"]).write_text(json.dumps({"version": ARTEFACT_VERSION + 1}))
    (folder / FILES["collapse"]).write_text("{not json")
    found = load_artefacts(folder)
    assert "stale" in found.notice("map") and "unreadable" in found.notice("collapse")


def test_precompute_errors_are_clear(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "alignx_demo", "precompute", "--model", str(tmp_path), "--eval-report", str(tmp_path / "none.json")],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr and "evaluation report not found" in out.stderr


def test_the_app_never_imports_umap():
    code = "import sys, alignx_demo.ui.app, alignx_demo.analysis.placement; assert 'umap' not in sys.modules, 'umap imported'"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]


def _clusters(per: int = 12, dim: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Three well-separated Gaussian clusters in `dim` dimensions and their labels."""
    gen = torch.Generator().manual_seed(0)
    centres = torch.eye(dim)[:3] * 10
    points = torch.cat([c + 0.1 * torch.randn(per, dim, generator=gen) for c in centres])
    return points, torch.arange(3).repeat_interleave(per)


@pytest.mark.parametrize("method", ["pca", pytest.param("umap", marks=pytest.mark.slow)])  # UMAP's first fit compiles numba code
def test_projection_keeps_clusters_apart_and_is_reproducible(method):
    from alignx_demo.analysis.projection import project_2d

    points, labels = _clusters()
    coords = project_2d(points, method)
    assert coords.shape == (36, 2) and coords.dtype == torch.float32 and torch.isfinite(coords).all()
    assert knn_purity(coords, labels, k=5) == 1.0, "the map mixes clusters the features keep apart"
    assert torch.equal(project_2d(points, method), coords), "the same features must give the same map"
    few = project_2d(points[:5], method)  # fewer points than UMAP's 15 neighbours
    assert few.shape == (5, 2) and torch.isfinite(few).all()


def test_unknown_projection_is_refused():
    from alignx_demo.analysis.projection import project_2d

    with pytest.raises(ValueError, match="projection must be 'umap' or 'pca', got 'tsne'"):
        project_2d(torch.randn(6, 4), "tsne")


@pytest.mark.slow
def test_precompute_builds_umap_maps(checkpoint, tmp_path):
    """The default projection end to end: precompute fits UMAP (not PCA) for every regime it can build."""
    import sys

    from alignx_demo.analysis.projection import project_2d
    from alignx_demo.precompute import run_precompute

    summary = run_precompute(checkpoint, None, tmp_path / "pre", quick=True, projection="umap", progress=False)
    assert summary["projection"] == "umap" and "umap" in sys.modules
    map_data = json.loads((tmp_path / "pre" / FILES["map"]).read_text())
    assert map_data["projection"] == "umap" and map_data["projection_note"].startswith("UMAP (umap-learn")
    assert set(map_data["regimes"]) == set(summary["regimes"]) == set(REGIMES) - {"joint_sft", "sequential_sft"}
    with safe_open(str(tmp_path / "pre" / FEATURES_FILE), "pt") as handle:
        base = handle.get_tensor("base").float()
    coords = torch.tensor(map_data["regimes"]["base"]["coords"])
    assert coords.shape == (summary["points"], 2)
    assert not torch.allclose(coords, project_2d(base, "pca"), atol=1e-2), "the map is a PCA"


# the first-visit stories ------------------------------------------------------------------------------------

def _runs(texts: list[str], weights: list[dict[str, float]] | None = None, calibration: dict | None = None) -> list[dict]:
    """Two minimal runs with these answers (one prompt token, one generated token each)."""
    def token(position: int, is_prompt: bool, w: dict[str, float]) -> dict:
        return {"position": position, "is_prompt": is_prompt, "weights": w, "top_expert": max(w, key=w.get), "text": "x"}

    weights = weights or [{"helpful": 0.2, "harmless": 0.2, "honest": 0.6}] * 2
    return [{"text": text, "settings": {"calibration": calibration}, "tokens": [token(0, True, w), token(1, False, w)]}
            for text, w in zip(texts, weights)]


def test_story_labels_follow_what_the_runs_did():
    from alignx_demo.analysis.stories import judge_calibration, judge_honesty, judge_refusal

    refused, answered = "I'm sorry, but I cannot help with that.", "Sure: first find a thin piece of metal."
    shown = judge_refusal(_runs([refused, answered]))
    assert shown["shows"] and "the model refuses this harmful request" in shown["label"]
    for texts, says in (([answered, refused], "answers this harmful request under “just right”"),
                        ([refused, refused], "refuses this harmful request both"), ([answered, answered], "neither run refuses")):
        verdict = judge_refusal(_runs(texts))
        assert not verdict["shows"] and verdict["label"].startswith("On this model the contrast does not show") and says in verdict["label"]
    corrected = judge_honesty(_runs(["No, that is a myth.", "Yes, people only use ten percent."]))
    assert corrected["shows"] and "pushes back on the misconception, with the honest expert carrying 60%" in corrected["label"]
    hedged = judge_honesty(_runs(["I'm not certain. The brain is complex.", "Yes, people only use ten percent."]))
    assert hedged["shows"] and "it says it is not sure (a hedge, not a correction), with the honest expert" in hedged["label"]
    helpful_led = [{"helpful": 0.7, "harmless": 0.1, "honest": 0.2}] * 2
    for verdict, says in ((judge_honesty(_runs(["Yes, it is true.", "Yes."])), "it does not push back on the premise"),
                          (judge_honesty(_runs(["No, it is a myth.", "No, not at all."])), "the helpful expert alone pushes back"),
                          (judge_honesty(_runs(["No, it is a myth.", "I have no comment."])), "alone hedges instead of answering too"),
                          (judge_honesty(_runs(["No, it is a myth.", "Yes."], helpful_led)), "the helpful expert, not the honest one")):
        assert not verdict["shows"] and says in verdict["label"], verdict["label"]
    calibrated = {"temperature": True}
    same = judge_calibration(_runs(["a", "a"], calibration=calibrated))
    assert not same["shows"] and "changes nothing visible" in same["label"]
    differ = judge_calibration(_runs(["a", "b"], [{"helpful": 0.4, "harmless": 0.3, "honest": 0.3},
                                                  {"helpful": 0.1, "harmless": 0.8, "honest": 0.1}], calibrated))
    assert differ["shows"] and "less sure of itself" in differ["label"] and "at 2 of 2 tokens" in differ["label"]
    assert "no calibration" in judge_calibration(_runs(["a", "a"]))["label"]


def test_a_story_keeps_the_first_prompt_that_shows_it_and_says_how_many_do():
    from alignx_demo.analysis.stories import STORIES, story_entry

    story = STORIES[0]
    tried = [(f"prompt {i}", _runs(texts), story.judge(_runs(texts))) for i, texts in enumerate(
        (["Sure.", "Sure."], ["I'm sorry, I cannot.", "Sure."], ["I cannot do that.", "Here you go."]))]
    entry = story_entry(story, tried)
    assert entry["prompt"] == "prompt 1" and entry["shows"] and entry["shown_by"] == 2 and entry["tried"] == 3
    assert entry["selection"] == "the first of the 3 prompts written for this story that shows it; 2 of 3 do"
    assert [run["name"] for run in entry["runs"]] == ["just right", "too helpful"]
    none = story_entry(story, tried[:1])
    assert none["prompt"] == "prompt 0" and not none["shows"] and none["label"].startswith("On this model the contrast does not show")


def test_the_stories_artefact_is_built_and_every_label_follows_its_runs(trained_precomputed):
    from alignx_demo.analysis.stories import STORIES, judge_entry
    from alignx_demo.analysis.traces import validate_trace
    from alignx_demo.data.behaviour import is_refusal

    data = json.loads((trained_precomputed / FILES["stories"]).read_text())
    assert data["schema"] == "alignx-stories/1" and [s["key"] for s in data["stories"]] == [s.key for s in STORIES]
    for entry in data["stories"]:
        assert entry["label"] == judge_entry(entry)["label"] and entry["tried"] == 3, entry["key"]
        for run in entry["runs"]:
            validate_trace(run["trace"])
            assert run["trace"]["prompt"] == entry["prompt"] and run["trace"]["settings"]["generation"]["max_new_tokens"] == 16
    refusal = data["stories"][0]
    refused = [is_refusal(run["trace"]["text"]) for run in refusal["runs"]]
    assert ("the model refuses this harmful request" in refusal["label"]) == (refused == [True, False])
    assert [r["trace"]["settings"]["routing"]["calibrated"] for r in data["stories"][2]["runs"]] == [True, False]


def test_the_shipped_routing_analysis_covers_the_map_prompts_and_the_unseen_slices_both_ways(trained_run, trained_precomputed):
    """Both levels, both routings; the out-of-distribution slices (4 prompts each with --quick) by data id, never text."""
    from alignx_demo.data.ood import ood_prompt_rows

    data = json.loads((trained_precomputed / FILES["analysis"]).read_text())
    slices = data["slices"]
    assert list(slices) == ["map_prompts_calibrated", "map_prompts_uncalibrated", "ood_calibrated", "ood_uncalibrated"]
    rows = ood_prompt_rows(trained_run[1], per_slice=4, slices=["mt_bench", "beavertails", "advbench", "xstest"])
    for name, entry in slices.items():
        result = entry["result"]
        n = 36 if name.startswith("map_prompts") else len(rows)
        assert result["analysed"] == n and {r["axis"] for r in result["rows"]} <= set(AXES)
        assert result["routing"]["calibrated"] == name.endswith("_calibrated")
        for level in ("prompt", "generation"):
            assert sum(map(sum, result["levels"][level]["confusion"]["matrix"])) == n, (name, level)
    ood = slices["ood_calibrated"]["result"]
    assert [r["prompt"] for r in ood["rows"]] == [r["id"] for r in rows] and ood["prompts_redacted"]
    assert set(ood["levels"]["prompt"]["slices"]["slice"]) == {"mt_bench", "beavertails", "advbench", "xstest"}
    def strings(value):
        if isinstance(value, str):
            yield value
        elif isinstance(value, (list, dict)):
            for item in value.values() if isinstance(value, dict) else value:
                yield from strings(item)

    shipped = list(strings(slices["ood_calibrated"])) + list(strings(slices["ood_uncalibrated"]))
    assert not any(r["prompt"] in s for r in rows for s in shipped), "no benchmark text is shipped"
