"""Axis Collapse honesty: map features never read the injected instruction, the base + instruction
control exists, the sentences follow the numbers, forgetting only where measured, and precompute
refuses to stamp a model's fingerprint on another model's figures. Tiny checkpoints, no UMAP."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch.nn import functional as F

from alignx_demo.analysis.artefacts import ProvenanceError, model_fingerprint
from alignx_demo.analysis.metrics import choose_representation, forgetting, measure, regime_sentence
from alignx_demo.analysis.placement import place
from alignx_demo.analysis.regimes import (
    INSTRUCTED, REFERENCE, REGIMES, ROUTED, RegimeSet, Representation, candidates, prompt_span,
)
from alignx_demo.config import AXES
from alignx_demo.data.templates import AXIS_PREAMBLES
from alignx_demo.modeling import load_mocae

PROMPT = "How do I bake bread at home?"
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


@pytest.fixture
def regimes(checkpoint):
    loaded = load_mocae(checkpoint, load_in_4bit=False)
    return RegimeSet.from_checkpoint(loaded.mocae, loaded.tokenizer, checkpoint)


@pytest.mark.parametrize("template", [None, CHAT_TEMPLATE])
@pytest.mark.parametrize("preamble", [None, AXIS_PREAMBLES["harmless"]])
def test_prompt_span_is_exactly_the_users_text(tokenizer, template, preamble):
    tk = copy.deepcopy(tokenizer)
    tk.chat_template = template
    for prompt in (PROMPT, "hi", "<|assistant|> typed as text"):
        ids, start, end = prompt_span(tk, prompt, preamble, max_len=256)
        assert tk.decode(ids[start:end]) == prompt
        if preamble:
            assert "expert" not in tk.decode(ids[start:]) and "expert" in tk.decode(ids[:start])


def test_map_features_never_read_the_instruction(regimes, tokenizer):
    """At depth 0 (token embeddings, before any attention) a user token's state cannot depend on
    the instruction, so the pooled features with and without it must be identical, and equal to
    the mean over the user's own tokens — pooling from position 0 would take in the instruction."""
    mocae = regimes.mocae
    reps = [Representation("prompt_mean", 0), Representation("prompt_mean", mocae.n_layers)]
    plain = regimes.features("base", [PROMPT], ["harmless"], reps).features
    told = regimes.features("base_instructed", [PROMPT], ["harmless"], reps).features
    user_ids = tokenizer(PROMPT, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    emb = mocae.model.get_input_embeddings().weight[user_ids].float()
    expected = F.rms_norm(emb, (emb.shape[-1],), eps=1e-6).mean(0)
    assert torch.allclose(plain["prompt_mean@0"][0], expected, atol=1e-5)
    assert torch.allclose(told["prompt_mean@0"][0], expected, atol=1e-5)
    last = f"prompt_mean@{mocae.n_layers}"
    assert not torch.allclose(plain[last], told[last], atol=1e-4)  # deeper, the instruction does act (via attention)


def test_base_instruction_control_is_the_base_given_stage1s_instruction(regimes):
    assert "base_instructed" in REGIMES and "base_instructed" in INSTRUCTED
    assert REFERENCE["stage1_experts"] == "base_instructed"
    assert "base_instructed" not in ROUTED
    mocae = regimes.mocae
    for axis in AXES:
        with regimes.applied("base_instructed", axis) as (routing, preamble):
            assert preamble == AXIS_PREAMBLES[axis]
            assert all(not m.lora_B.any() for m in mocae.expert_modules.values())  # no expert, no adapter
        with regimes.applied("stage1_experts", axis) as (routing, stage1_preamble):
            assert stage1_preamble == preamble and routing.axis_prior[AXES.index(axis)] == 1.0
        with regimes.applied("stage1_uninstructed", axis) as (routing, none):
            assert none is None and routing.axis_prior[AXES.index(axis)] == 1.0
    assert any(m.lora_B.any() for m in mocae.expert_modules.values())  # restored


def _clusters(spread: float, seed: int, n: int = 20) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.eye(3, 8) * 4.0
    return torch.cat([centres[k] * spread + torch.randn(n, 8, generator=gen) for k in range(3)])


LABELS = torch.arange(3).repeat_interleave(20)


def _table(stage1_spread: float, control_spread: float) -> dict:
    """Stage 1 and its control share their noise, so only the spreads differ between them."""
    features = {"base": _clusters(0.0, 0), "base_instructed": _clusters(control_spread, 2),
                "stage1_experts": _clusters(stage1_spread, 2), "mocae": _clusters(0.0, 3)}
    return measure(features, LABELS)


def test_regime_sentences_follow_the_numbers():
    trained = _table(stage1_spread=1.0, control_spread=0.0)  # training separates, the instruction does not
    told = _table(stage1_spread=1.0, control_spread=1.0)  # the instruction alone separates as much
    a = regime_sentence("stage1_experts", trained["stage1_experts"], trained)
    b = regime_sentence("stage1_experts", told["stage1_experts"], told)
    assert a != b
    assert "visibly pushes the axes further apart" in a and "within noise" in b and "no contrast" in b
    for sentence, table in ((a, trained), (b, told)):
        base, ctrl, stage1 = (table[r]["silhouette"] for r in ("base", "base_instructed", "stage1_experts"))
        share = max(0.0, min(1.0, (ctrl - base) / (stage1 - base)))
        assert f"{share:.0%} is already there" in sentence and f"{1 - share:.0%} is what training added" in sentence
    row = trained["stage1_experts"]
    assert f"{row['silhouette']:.3f}" in a and f"{row['knn_purity']:.3f}" in a
    flat = regime_sentence("base_instructed", trained["base_instructed"], trained)
    assert "within noise" in flat and "the instruction makes no contrast" in flat
    routed = regime_sentence("mocae", trained["mocae"], trained, routing_accuracy=0.75, misrouted=15)
    assert "75%" in routed and "15 misrouted" in routed
    for regime in ("base", "base_instructed", "stage1_experts"):
        text = regime_sentence(regime, trained[regime], trained, routing_accuracy=0.75, misrouted=15)
        assert "rout" not in text.lower(), regime  # no router in these regimes


def test_representation_is_chosen_where_training_shows():
    shows = _table(stage1_spread=1.0, control_spread=0.0)
    hides = _table(stage1_spread=0.0, control_spread=0.0)
    chosen, why = choose_representation({"answer@2": hides, "prompt_mean@1": shows})
    assert chosen == "prompt_mean@1" and "prompt_mean@1" in why
    assert len(candidates(2)) == 6 and {c.name for c in candidates(2)} >= {"answer@2", "prompt_mean@0"}
    with pytest.raises(ValueError):
        Representation.parse("mean@x")


def test_forgetting_only_where_measured():
    stages = [{"axis": "helpful", "heldout_loss": {"helpful": 2.0, "harmless": 3.0, "honest": 3.0}},
              {"axis": "harmless", "heldout_loss": {"helpful": 2.5, "harmless": 1.5, "honest": 3.0}},
              {"axis": "honest", "heldout_loss": {"helpful": 2.7, "harmless": 1.9, "honest": 1.0}}]
    summary = {"sequential_sft": {"stages": stages, "forgetting": {"helpful": 0.7, "harmless": 0.4}}}
    rows, note = forgetting(summary)
    assert set(rows) == {"helpful", "harmless"}  # the last stage's axis has nothing after it: no figure
    assert rows["helpful"] == {"forgetting": 0.7, "loss_after_own_stage": 2.0, "loss_after_last_stage": 2.7}
    assert "helpful → harmless → honest" in note
    old = {"sequential_sft": {"helpful": {"steps": 150}, "harmless": {"steps": 150}, "honest": {"steps": 150}}}
    for missing in (old, None):
        rows, note = forgetting(missing)
        assert rows is None and note.startswith("not measured")


def _report(tmp_path, **fields):
    path = tmp_path / "eval.json"
    path.write_text(json.dumps({"schema": 1, "model": "x", "routing": {}, **fields}))
    return path


def test_precompute_refuses_to_stamp_another_models_figures(checkpoint, tmp_path, capsys):
    from alignx_demo.cli import main
    from alignx_demo.precompute import run_precompute

    mine = model_fingerprint(checkpoint)
    out = tmp_path / "out"
    with pytest.raises(ProvenanceError, match="carries no model fingerprint"):
        run_precompute(checkpoint, None, out, eval_report=_report(tmp_path), progress=False)
    with pytest.raises(ProvenanceError, match=f"0123456789abcdef.*{mine}"):
        run_precompute(checkpoint, None, out, eval_report=_report(tmp_path, model_fingerprint="0123456789abcdef"), progress=False)
    assert not out.exists()  # refused before any work
    assert main(["precompute", "--model", str(checkpoint), "--eval-report", str(_report(tmp_path)), "--out", str(out),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "fingerprint" in err and "Traceback" not in err


def test_fingerprint_covers_the_baseline_adapters(checkpoint):
    before = model_fingerprint(checkpoint)
    folder = checkpoint / "baselines" / "joint_sft"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    assert model_fingerprint(checkpoint) != before


def test_placement_uses_the_maps_representation(regimes):
    from alignx_demo.analysis.map_prompts import map_prompts

    pairs = map_prompts(2)
    prompts, axes = [p for _, p in pairs], [a for a, _ in pairs]
    rep = Representation("answer", regimes.mocae.n_layers)
    map_data = {"prompts": [{"index": i, "axis": a, "text": p} for i, (a, p) in enumerate(pairs)],
                "feature": {"representation": rep.name}, "regimes": {}}
    features = {}
    for regime in regimes.available:
        features[regime] = regimes.features(regime, prompts, axes, [rep]).features[rep.name]
        map_data["regimes"][regime] = {"coords": [[float(i), 0.0] for i in range(len(prompts))]}
    placed = place(regimes, map_data, features, prompts[0], k=1)
    assert placed["representation"] == rep.name
    for regime in ("base", "mocae"):  # regimes that do not depend on the prompt's axis
        spot = placed["regimes"][regime]
        assert spot["neighbours"][0]["index"] == 0 and spot["neighbours"][0]["distance"] < 1e-3
    assert placed["regimes"]["base_instructed"]["placed_as"] == placed["router_axis"]
    assert "unavailable" in placed["regimes"]["joint_sft"]
