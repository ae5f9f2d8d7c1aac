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
    save_mocae(MoCaEModel(model), tokenizer, tmp_path / "odd")
    loaded = load_mocae(tmp_path / "odd", load_in_4bit=True, device="cpu")
    mlp = loaded.mocae.model.model.layers[0].mlp
    assert not any(isinstance(getattr(mlp, n).base, bnb.nn.Linear4bit) for n in ("gate_proj", "up_proj", "down_proj"))
    assert isinstance(loaded.mocae.model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    assert any("except down_proj, gate_proj, up_proj" in n for n in loaded.notices)
    assert len(list(RoutedGeneration(loaded.mocae, loaded.tokenizer, "Hi", GenerationSettings(max_new_tokens=3)))) > 3
