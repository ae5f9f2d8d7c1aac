"""The efficiency benchmark: systems, analytic counts, and the documented report schema."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from alignx_demo.evaluation.efficiency import BenchShape, DenseMoEMLP, analytic


@pytest.mark.slow
def test_bench_quick_writes_ratios(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "alignx_demo", "bench", "--quick", "--repeats", "1", "--out", str(out),
           "--hidden-size", "64", "--intermediate-size", "128", "--layers", "2"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert set(report["systems"]) == {"base", "mocae_soft", "mocae_top1", "xlora", "dense_moe", "ensemble"}
    ratios = report["ratios"]
    assert report["batches"] == [1, 8]  # --quick measures batch 1 and 8 side by side
    for key in ("mocae_soft_vs_base_latency", "mocae_soft_vs_base_latency_b8", "mocae_params_vs_base", "xlora_vs_mocae_latency",
                "dense_moe_vs_mocae_latency", "dense_moe_vs_mocae_memory", "ensemble_vs_mocae_memory"):
        assert ratios[key] > 0, key
    assert {"dense_moe_vs_mocae_macs", "dense_moe_vs_mocae_weight_bytes", "xlora_vs_mocae_macs"} <= set(report["analytic"])
    counts = report["parameters"]
    assert ratios["mocae_params_vs_base"] == (counts["experts"] + counts["routers"]) / counts["base"]
    # rank 8, three experts on gate/up (64→128) and down (128→64) of 2 layers
    assert counts["experts"] == 2 * 3 * 8 * (3 * (64 + 128))
    # measured weight bytes agree with the analytic count (the ensemble is three full models)
    assert ratios["ensemble_vs_mocae_memory"] == pytest.approx(report["analytic"]["ensemble_vs_mocae_weight_bytes"], rel=0.01)


@pytest.mark.slow
def test_bench_in_4bit_measures_the_served_form(tmp_path):
    """`--load-in-4bit` loads the random base's linears in NF4 (as a bundle is served) for the base and
    MoCaE alike, and refuses systems it does not build in one sentence."""
    out = tmp_path / "bench4.json"
    shape = ["--hidden-size", "64", "--intermediate-size", "128", "--layers", "2", "--heads", "4", "--vocab-size", "256"]
    cmd = [sys.executable, "-m", "alignx_demo", "bench", "--load-in-4bit", "--systems", "base,mocae_soft", "--repeats", "1",
           "--batches", "1", "--quick", "--out", str(out), *shape]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["base_weights"].startswith("4-bit NF4") and report["ratios"]["mocae_soft_vs_base_latency"] > 0
    fp32_bytes = 4 * sum(p.numel() for p in BenchShape(64, 128, 2, 4, 256).build().parameters())
    assert report["systems"]["base"]["model_bytes"] < 0.8 * fp32_bytes  # the decoder linears are packed
    assert "mocae_soft_vs_base_weight_bytes" not in report["analytic"]  # fp32 byte counts do not apply
    refused = subprocess.run([*cmd[:5], "--systems", "base,xlora", *shape], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "--load-in-4bit measures only base, mocae_soft, mocae_top1; drop xlora" in refused.stderr


def test_latency_ratios_pair_the_systems_round_by_round():
    """A slow round slows both systems timed in it: the ratio is the median of per-round ratios (2.0
    here), not the ratio of the two medians (4 ÷ 15), which compares different moments."""
    from alignx_demo.evaluation.efficiency import _paired_ratio

    samples = {"a": {"decode_ms_b1": [2.0, 4.0, 30.0]}, "b": {"decode_ms_b1": [1.0, 20.0, 15.0]}}
    assert _paired_ratio(samples, "decode_ms_b1", "a", "b") == (2.0, [0.2, 2.0])
    assert _paired_ratio(samples, "decode_ms_b8", "a", "b") is None


def test_unknown_system_is_a_clear_error():
    result = subprocess.run([sys.executable, "-m", "alignx_demo", "bench", "--systems", "base,warp_drive"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "unknown system(s) ['warp_drive']" in result.stderr


def test_dense_moe_layer_is_a_top2_mixture():
    shape = BenchShape(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4, vocab_size=50)
    mlp = shape.build().model.layers[0].mlp
    layer = DenseMoEMLP(mlp, 32, seed=0)
    x = torch.randn(2, 3, 32)
    with torch.no_grad():
        got = layer(x)
        probs = torch.softmax(layer.router(x), -1)
        w, i = probs.topk(2, dim=-1)
        w = w / w.sum(-1, keepdim=True)
        outs = torch.stack([e(x) for e in layer.experts], dim=-2)  # (2, 3, 3 experts, 32)
        expected = (outs.gather(-2, i[..., None].expand(-1, -1, -1, 32)) * w[..., None]).sum(-2)
    assert torch.allclose(got, expected, atol=1e-6)


def test_analytic_counts_are_the_built_systems_weights():
    """The analytic table counts the weights the benchmark really builds (RMSNorm weights aside), so its
    7B figures — MoCaE's > 40 % memory saving over a dense MoE, the papers' claim — follow from the same formulas."""
    from alignx_demo.evaluation.efficiency import LLAMA_7B_SHAPE, build_systems

    shape = BenchShape(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, vocab_size=256)
    _, sizes, mocae = build_systems(shape, ("base", "mocae_soft", "dense_moe", "ensemble"), 8, torch.device("cpu"))
    table = analytic(shape, rank=8, prompt_len=32, new_tokens=32)
    head_dim = shape.hidden_size // shape.num_heads
    uncounted = 4 * ((2 * shape.num_layers + 1) * shape.hidden_size + head_dim)  # fp32 RMSNorms (two a layer, one final),
    assert sizes["base"] == table["base"]["weight_bytes"] + uncounted  # and the rotary frequencies (two buffers of head_dim / 2)
    assert sizes["dense_moe"] - sizes["base"] == table["dense_moe"]["weight_bytes"] - table["base"]["weight_bytes"]
    assert sizes["ensemble"] == 3 * sizes["base"] and table["ensemble"]["weight_bytes"] == 3 * table["base"]["weight_bytes"]
    counts = mocae.count_parameters()
    assert sizes["mocae_soft"] - sizes["base"] == 4 * (counts["experts"] + counts["routers"])
    added_macs = table["mocae_soft"]["macs_per_token"] - table["base"]["macs_per_token"]  # one MAC per added weight
    assert counts["experts"] < added_macs <= counts["experts"] + counts["routers"]
    big = analytic(LLAMA_7B_SHAPE, rank=8, prompt_len=32, new_tokens=32)
    assert 1 - big["mocae_soft"]["weight_bytes"] / big["dense_moe"]["weight_bytes"] > 0.4


def test_bench_shape_of_a_checkpoint(tmp_path):
    from alignx_demo.serving import DEFAULT_MODEL

    shape = BenchShape.of_checkpoint(DEFAULT_MODEL)
    config = json.loads((DEFAULT_MODEL / "base" / "config.json").read_text())
    assert (shape.hidden_size, shape.intermediate_size, shape.num_layers, shape.vocab_size) == (
        config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"], config["vocab_size"])
    from transformers import AutoModelForCausalLM

    real = AutoModelForCausalLM.from_pretrained(str(DEFAULT_MODEL / "base"), use_safetensors=True)
    built = shape.build()  # a Llama at the checkpoint's sizes, whatever its family: the embeddings and their tie kept
    assert built.get_input_embeddings().weight.shape == real.get_input_embeddings().weight.shape
    assert (built.get_output_embeddings().weight is built.get_input_embeddings().weight) == (
        real.get_output_embeddings().weight is real.get_input_embeddings().weight)
    with pytest.raises(FileNotFoundError, match="base config"):
        BenchShape.of_checkpoint(tmp_path)


def test_bench_shape_of_with_overrides(tmp_path, capsys):
    """--shape-of takes a checkpoint's shapes; single size options override them (the retrained demo's FFN 704)."""
    from alignx_demo.cli import main
    from alignx_demo.serving import DEFAULT_MODEL

    out = tmp_path / "bench.json"
    code = main(["bench", "--shape-of", str(DEFAULT_MODEL), "--intermediate-size", "704", "--systems", "base,mocae_soft",
                 "--repeats", "1", "--batches", "1", "--quick", "--device", "cpu", "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    config = json.loads((DEFAULT_MODEL / "base" / "config.json").read_text())
    assert report["shape"] == {"hidden_size": config["hidden_size"], "intermediate_size": 704, "num_layers": config["num_hidden_layers"],
                               "num_heads": config["num_attention_heads"], "vocab_size": config["vocab_size"],
                               "tie_word_embeddings": config["tie_word_embeddings"]}
    assert report["batches"] == [1] and report["ratios"]["mocae_soft_vs_base_latency"] > 0
    assert main(["bench", "--batches", "1,x", "--systems", "base"]) == 2
    assert "--batches takes comma-separated whole numbers" in capsys.readouterr().err
