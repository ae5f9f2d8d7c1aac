"""Checkpoint format: round trip, 4-bit loading, and the errors a broken checkpoint gives."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import build_checkpoint

from alignx_demo.config import GenerationSettings, RoutingSettings
from alignx_demo.generation import RoutedGeneration
from alignx_demo.modeling import CheckpointError, load_mocae


def routed_logits(mocae, ids, settings):
    with torch.no_grad(), mocae.routed(settings), mocae.record() as rec:
        out = mocae(input_ids=ids).logits
    return out, rec.stacked_weights()


def test_save_load_round_trip_reproduces_logits_and_traces(checkpoint, tokenizer, tmp_path):
    from alignx_demo.modeling import save_mocae

    first = load_mocae(checkpoint, load_in_4bit=False)
    save_mocae(first.mocae, first.tokenizer, tmp_path / "again")
    second = load_mocae(tmp_path / "again", load_in_4bit=False)
    ids = torch.tensor([[5, 17, 42, 99, 3, 250]])
    for settings in (RoutingSettings(calibrated=True), RoutingSettings(calibrated=False), RoutingSettings(mode="top1")):
        a, wa = routed_logits(first.mocae, ids, settings)
        b, wb = routed_logits(second.mocae, ids, settings)
        assert torch.equal(a, b) and torch.equal(wa, wb)
    runs = [RoutedGeneration(m.mocae, m.tokenizer, "Tell me about bread.", GenerationSettings(max_new_tokens=8)) for m in (first, second)]
    traces = [(list(r), r.trace())[1] for r in runs]
    assert traces[0]["tokens"] == traces[1]["tokens"]
    assert second.mocae.calibration is not None and second.mocae.calibration.enabled() == {"temperature": True}


def test_checkpoint_layout_is_standard(checkpoint):
    assert json.loads((checkpoint / "mocae_config.json").read_text())["schema_version"] == 1
    for axis in ("helpful", "harmless", "honest"):
        cfg = json.loads((checkpoint / "experts" / axis / "adapter_config.json").read_text())
        assert cfg["peft_type"] == "LORA" and cfg["r"] == 8
    files = {p.name for p in checkpoint.rglob("*") if p.is_file()}
    assert not any(name.endswith((".bin", ".pt", ".pkl", ".pth")) for name in files)
    assert {"router.safetensors", "calibration.safetensors", "model.safetensors"} <= files


def test_4bit_load_and_generate_on_cpu(checkpoint, tokenizer, tmp_path):
    import bitsandbytes as bnb

    loaded = load_mocae(checkpoint, load_in_4bit=True, device="cpu")
    assert loaded.quantized and "4-bit" in loaded.description
    wrapped = next(iter(loaded.mocae.expert_modules.values()))
    assert isinstance(wrapped.base, bnb.nn.Linear4bit)
    assert wrapped.base.weight.quant_state.nested  # double quantisation
    for router in loaded.mocae.routers:
        assert type(router.proj) is torch.nn.Linear and router.proj.weight.dtype == torch.float32
    assert not isinstance(loaded.mocae.model.lm_head, bnb.nn.Linear4bit)
    run = RoutedGeneration(loaded.mocae, loaded.tokenizer, "How do I bake bread?", GenerationSettings(max_new_tokens=6))
    tokens = list(run)
    assert sum(not t.is_prompt for t in tokens) == 6
    full = load_mocae(checkpoint, load_in_4bit=False)
    ids = torch.tensor([[5, 17, 42, 99]])
    q, _ = routed_logits(loaded.mocae, ids, RoutingSettings())
    f, _ = routed_logits(full.mocae, ids, RoutingSettings())
    other = load_mocae(build_checkpoint(tmp_path / "other", tokenizer, seed=7)).mocae
    o, _ = routed_logits(other, ids, RoutingSettings())
    # quantised, yet the same model: far closer to its full-precision self than another model is
    assert (q - f).norm() < 0.5 * (o - f).norm()


def test_bitsandbytes_missing_falls_back_with_notice(checkpoint, monkeypatch):
    from alignx_demo.modeling import checkpoint as ckpt

    monkeypatch.setattr(ckpt, "bitsandbytes_problem", lambda: "bitsandbytes unavailable (test)")
    loaded = load_mocae(checkpoint, load_in_4bit=True)
    assert not loaded.quantized
    assert loaded.notices == ["4-bit off: bitsandbytes unavailable (test); loaded in full precision"]


@pytest.mark.parametrize(
    "damage, named",
    [
        (lambda c: (c / "router.safetensors").unlink(), "router.safetensors"),
        (lambda c: (c / "router.safetensors").write_bytes(b"\x00garbage"), "router.safetensors"),
        (lambda c: (c / "calibration.safetensors").write_bytes(b"nonsense"), "calibration.safetensors"),
        (lambda c: (c / "experts" / "honest" / "adapter_model.safetensors").unlink(), "adapter_model.safetensors"),
        (lambda c: (c / "experts" / "harmless" / "adapter_config.json").write_text("{"), "adapter_config.json"),
        (lambda c: (c / "mocae_config.json").unlink(), "mocae_config.json"),
        (lambda c: (c / "mocae_config.json").write_text('{"rank": 8, "bogus": 1}'), "mocae_config.json"),
        (lambda c: shutil.rmtree(c / "base"), "base"),
        (lambda c: (c / "base" / "model.safetensors").unlink(), "model.safetensors"),
    ],
)
def test_broken_checkpoint_gives_clear_error_naming_the_file(checkpoint, damage, named):
    damage(checkpoint)
    with pytest.raises(CheckpointError, match=named):
        load_mocae(checkpoint, load_in_4bit=False)


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint folder not found"):
        load_mocae(tmp_path / "nope")


def test_gpt2_checkpoint_round_trip(tmp_path, tokenizer):
    path = build_checkpoint(tmp_path / "gpt2", tokenizer, family="gpt2")
    loaded = load_mocae(path, load_in_4bit=False)
    assert loaded.mocae.model.config.model_type == "gpt2"
    assert len(list(RoutedGeneration(loaded.mocae, loaded.tokenizer, "hi there", GenerationSettings(max_new_tokens=3)))) > 3


def test_4bit_on_cpu_keeps_unpackable_widths_in_full_precision(tmp_path, tokenizer):
    """bitsandbytes' CPU kernels need out % 32 and in % 64: an FFN of 72 stays unquantised, attention not."""
    import bitsandbytes as bnb
    import transformers as tf

    from alignx_demo.modeling import MoCaEModel, save_mocae

    model = tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=72, num_hidden_layers=2,
                                               num_attention_heads=4, max_position_embeddings=128)).eval()
    save_mocae(MoCaEModel(model), tokenizer, tmp_path / "odd")  # untrained (uniform) routers: enough here
    loaded = load_mocae(tmp_path / "odd", load_in_4bit=True, device="cpu", allow_untrained=True)
    mlp = loaded.mocae.model.model.layers[0].mlp
    assert not any(isinstance(getattr(mlp, n).base, bnb.nn.Linear4bit) for n in ("gate_proj", "up_proj", "down_proj"))
    assert isinstance(loaded.mocae.model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    assert any("except down_proj, gate_proj, up_proj" in n for n in loaded.notices)
    assert len(list(RoutedGeneration(loaded.mocae, loaded.tokenizer, "Hi", GenerationSettings(max_new_tokens=3)))) > 3


# checkpoints that cannot lie -----------------------------------------------------------------------------

def _zero_routers(folder, metadata=None):
    from safetensors.torch import load_file, save_file

    routers = load_file(str(folder / "router.safetensors"))
    save_file({k: torch.zeros_like(v) for k, v in routers.items()}, str(folder / "router.safetensors"),
              metadata=metadata or {"format": "pt"})


def _one_sentence(err) -> None:
    text = str(err.value)
    assert "\n" not in text and text.count(". ") == 0


def test_untrained_routers_are_refused_in_one_sentence(checkpoint):
    """The experts stage and import-experts write all-zero routers (uniform 1/3 routing): not servable."""
    _zero_routers(checkpoint)
    with pytest.raises(CheckpointError, match=r"never trained .*train router --out") as err:
        load_mocae(checkpoint, load_in_4bit=False)
    _one_sentence(err)
    loaded = load_mocae(checkpoint, load_in_4bit=False, allow_untrained=True)  # what `train router` loads
    assert all(not r.proj.weight.any() for r in loaded.mocae.routers)


def test_calibration_must_be_fitted_for_the_routers_beside_it(checkpoint):
    from safetensors.torch import load_file, save_file

    from alignx_demo.modeling.provenance import fingerprint, trained_metadata, untrained_problem
    from alignx_demo.training.calibrate import save_marked

    assert untrained_problem(checkpoint) is None  # an older checkpoint: no markers at all, trained-looking routers
    router_file = checkpoint / "router.safetensors"
    routers = load_file(str(router_file))
    save_file(routers, str(router_file), metadata={"format": "pt", **trained_metadata("router", steps=1)})
    with pytest.raises(CheckpointError, match=r"calibration.safetensors was not fitted .*train calibrate --out") as err:
        load_mocae(checkpoint, load_in_4bit=False)  # routers retrained (marked), calibration from before
    _one_sentence(err)
    stack = load_mocae(checkpoint, load_in_4bit=False, allow_untrained=True).mocae.calibration
    save_marked(stack, checkpoint / "calibration.safetensors", trained_metadata("calibrate", router="0123456789abcdef"))
    with pytest.raises(CheckpointError, match="fitted for other routers") as err:
        load_mocae(checkpoint, load_in_4bit=False)
    _one_sentence(err)
    save_marked(stack, checkpoint / "calibration.safetensors", trained_metadata("calibrate", router=fingerprint(routers)))
    loaded = load_mocae(checkpoint, load_in_4bit=False)
    assert loaded.mocae.calibration.enabled() == {"temperature": True}


def test_the_bundled_demo_model_carries_the_markers_of_its_training():
    from pathlib import Path

    from alignx_demo.modeling.provenance import read_marker, untrained_problem

    demo = Path(__file__).resolve().parents[1] / "assets" / "demo-model"
    if not (demo / "router.safetensors").exists():
        pytest.skip("no bundled demo model in this checkout")
    assert read_marker(demo / "router.safetensors")["stage"] == "router"
    assert read_marker(demo / "calibration.safetensors")["stage"] == "calibrate" and untrained_problem(demo) is None


def test_staged_outputs_move_into_place_only_when_the_stage_finishes(tmp_path):
    from alignx_demo.training.pipeline import staged

    out = tmp_path / "run"
    (out / "logs").mkdir(parents=True)
    (out / "router.safetensors").write_text("old routers")
    (out / "calibration.safetensors").write_text("old calibration")
    with pytest.raises(RuntimeError, match="data error"), staged(out, "router", remove=["calibration.safetensors"]) as tmp:
        (tmp / "router.safetensors").write_text("half-written routers")
        raise RuntimeError("data error")
    assert (out / "router.safetensors").read_text() == "old routers" and (out / "calibration.safetensors").exists()
    with staged(out, "router", remove=["calibration.safetensors"]) as tmp:
        assert tmp.parent == out.parent  # a sibling: the same filesystem, so the moves are renames
        (tmp / "router.safetensors").write_text("new routers")
        (tmp / "logs").mkdir()
        (tmp / "logs" / "router_summary.json").write_text("{}")
    assert (out / "router.safetensors").read_text() == "new routers" and (out / "logs" / "router_summary.json").exists()
    assert not (out / "calibration.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary folder left behind


def test_train_router_changes_nothing_when_it_fails_and_marks_what_it_writes(checkpoint, monkeypatch):
    from safetensors import safe_open

    from alignx_demo.training import router as stage
    from alignx_demo.training.pipeline import stage_done

    _zero_routers(checkpoint)  # as the experts stage leaves them
    before = (checkpoint / "router.safetensors").read_bytes()
    monkeypatch.setattr(stage, "router_examples", lambda *a, **k: [])
    monkeypatch.setattr(stage, "encode_set", lambda *a, **k: [])

    def failing(*args, **kwargs):
        raise ValueError("data error: no router examples")

    monkeypatch.setattr(stage, "train_loop", failing)
    with pytest.raises(ValueError, match="data error"):
        stage.train_router(checkpoint, [], stage.RouterConfig(steps=1))
    assert (checkpoint / "router.safetensors").read_bytes() == before and (checkpoint / "calibration.safetensors").exists()
    assert not stage_done(checkpoint, "router")
    with pytest.raises(CheckpointError, match="never trained"):  # and nothing serves the uniform routers
        load_mocae(checkpoint, load_in_4bit=False)

    def training(mocae, params, *args, **kwargs):
        with torch.no_grad():
            for p in params:
                p.fill_(0.1)
        return {"steps": 1}

    monkeypatch.setattr(stage, "train_loop", training)
    stage.train_router(checkpoint, [], stage.RouterConfig(steps=1))
    with safe_open(str(checkpoint / "router.safetensors"), "pt") as handle:
        assert json.loads(handle.metadata()["alignx_trained"])["stage"] == "router"
    assert not (checkpoint / "calibration.safetensors").exists()  # fitted for the old routers
    assert stage_done(checkpoint, "router") and not stage_done(checkpoint, "calibrate")
    assert load_mocae(checkpoint, load_in_4bit=False).mocae.calibration is None
