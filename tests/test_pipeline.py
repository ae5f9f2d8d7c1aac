"""The quick training pipeline end to end, calibration, geometry calibrators and `evaluate`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alignx_demo.config import GenerationSettings, RoutingSettings
from alignx_demo.generation import RoutedGeneration
from alignx_demo.modeling import load_mocae
from alignx_demo.modeling.geometry import FractalGeometry, knn_distances, levina_bickel_lid

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "alignx_demo", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_quick_pipeline_produces_a_loadable_checkpoint(trained_run):
    out, _ = trained_run
    for name in ("mocae_config.json", "router.safetensors", "calibration.safetensors"):
        assert (out / name).exists(), name
    for name in ("joint_sft", "sequential_sft", "uniform_merge"):
        assert (out / "baselines" / name / "adapter_model.safetensors").exists()
    loaded = load_mocae(out, load_in_4bit=False)
    assert loaded.mocae.calibration.names == ["temperature", "natural", "fractal", "pooled"]
    run = RoutedGeneration(loaded.mocae, loaded.tokenizer, "Give me a tip.", GenerationSettings(max_new_tokens=5))
    assert sum(not t.is_prompt for t in run) >= 1


def test_baseline_adapters_load_in_peft(trained_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out, _ = trained_run
    merged = json.loads((out / "baselines" / "sequential_sft" / "adapter_config.json").read_text())
    assert merged["r"] == 24
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(out / "base"), str(out / "baselines" / "uniform_merge"))
    loaded = load_mocae(out, load_in_4bit=False)
    ids = torch.tensor([[3, 40, 41, 42, 43]])
    with torch.no_grad(), loaded.mocae.routed(RoutingSettings(axis_prior=(1, 1, 1))):
        ours = loaded.mocae(input_ids=ids).logits
    assert torch.allclose(model(input_ids=ids).logits, ours, atol=1e-5)


def test_calibration_lowers_nll_on_prompts_it_was_not_fitted_on(trained_run):
    out, _ = trained_run
    report = json.loads((out / "logs" / "calibration_summary.json").read_text())["report"]
    token, prompt = report["select_token_nll"], report["select_prompt_nll"]
    assert token["fractal"] < token["uncalibrated"]
    assert prompt["pooled"] < prompt["uncalibrated"]


def test_each_calibrator_can_be_switched_off(trained_run):
    out, _ = trained_run
    loaded = load_mocae(out, load_in_4bit=False)
    stack = loaded.mocae.calibration
    stack.parts[1].beta = 2.0  # make the fractal part active whatever the fit chose
    ids = torch.tensor([[3, 40, 41, 42, 43, 44]])

    def weights() -> torch.Tensor:
        with torch.no_grad(), loaded.mocae.routed(RoutingSettings(calibrated=True)), loaded.mocae.record() as rec:
            loaded.mocae(input_ids=ids)
        return rec.stacked_weights()

    full = weights()
    for name in ("temperature", "natural", "fractal"):  # token-level parts; `pooled` acts on run-level means
        stack.set_enabled(**{name: False})
        assert not torch.allclose(weights(), full), f"switching {name} off changed nothing"
        stack.set_enabled(**{name: True})
    assert torch.equal(weights(), full)
    with pytest.raises(KeyError, match="no calibration part"):
        stack.set_enabled(bogus=False)


def test_levina_bickel_lid_recovers_known_dimension():
    gen = torch.Generator().manual_seed(0)
    for dim in (2, 5):
        latent = torch.rand(3000, dim, generator=gen)
        points = latent @ torch.randn(dim, 20, generator=gen)  # a dim-dimensional subspace of R^20
        lid = levina_bickel_lid(knn_distances(points[:300], points, 20, exclude_self=True)).median()
        assert abs(float(lid) - dim) < 0.25 * dim + 0.3


def test_fractal_tempering_flattens_off_manifold_tokens():
    gen = torch.Generator().manual_seed(0)
    bank = torch.randn(500, 4, generator=gen) * 0.1
    part = FractalGeometry(torch.zeros(1, 4), torch.eye(4)[None], bank[None], torch.tensor([4.0]), torch.tensor([0.1]), k=10, beta=0.0, beta_dist=1.0)
    logp = torch.log(torch.tensor([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05]]))
    features = torch.stack([torch.zeros(4), torch.full((4,), 10.0)])
    out = part.apply(0, logp, features).exp()
    assert out[0, 0] > 0.85 and out[1, 0] < 0.5


def test_evaluate_quick_schema(trained_run, tmp_path):
    out, data = trained_run
    report_path = tmp_path / "eval.json"
    systems = "base,expert_harmless,joint_sft,sequential_sft,uniform_merge,mocae_uncalibrated,mocae_full"
    run_cli("evaluate", "--model", str(out), "--data-dir", str(data), "--quick", "--systems", systems,
            "--out", str(report_path), "--no-progress")
    report = json.loads(report_path.read_text())
    assert list(report["systems"]) == systems.split(",")
    row = report["systems"]["mocae_full"]
    for key in ("harmful_refusal_rate", "unsafe_rate", "xstest_safe_over_refusal", "no_comment_rate", "mc1", "mc2",
                "preference_accuracy_proxy"):
        assert 0 <= row[key]["value"] <= 1 and len(row[key]["ci95"]) == 2, key
    assert set(row["heldout_loss"]) == {"helpful", "harmless", "honest"}
    assert row["composite_uses"] == "preference_accuracy_proxy"
    for split in ("eval", "xstest_shifted"):
        assert {"uncalibrated", "temperature", "natural", "fractal"} <= set(report["routing"][split])
        for level in ("token", "prompt", "generation"):
            metrics = report["routing"][split]["fractal"][level]
            assert {"accuracy", "ece", "classwise_ece", "brier", "nll"} <= set(metrics) and 0 <= metrics["ece"] <= 1
            assert set(report["routing_summary"][split][level]) == {"raw", "calibrated"}
    assert report["data_files_sha256"] and len(report["model_fingerprint"]) == 16
    assert all(record["version"] >= 1 and record["prompt_sha256"] for record in report["tasks"].values())
    presets = report["presets"]["presets"]
    assert list(presets) == ["too helpful", "too harmless", "too honest", "just right"]
    assert all(0 <= presets[p][k]["value"] <= 1 for p in presets for k in ("harmful_refusal_rate", "benign_refusal_rate",
                                                                             "honesty_hedge_rate", "helpful_answered_rate"))
    csv = report_path.with_suffix(".csv").read_text().splitlines()
    assert csv[0].startswith("system,") and len(csv) == 1 + len(systems.split(","))


def test_evaluate_presets_alone(trained_run, tmp_path):
    out, data = trained_run
    report_path = tmp_path / "presets.json"
    printed = run_cli("evaluate", "--model", str(out), "--data-dir", str(data), "--quick", "--tasks", "presets",
                      "--preset-new-tokens", "4", "--out", str(report_path), "--no-progress").stdout
    report = json.loads(report_path.read_text())
    assert report["systems"] == {} and set(report["tasks"]) == {"presets"} and report["config"]["preset_new_tokens"] == 4
    assert "too harmless: harmful_refusal_rate" in printed and "target >= 0.90" in printed


@pytest.mark.parametrize(
    "extra, message",
    [(["--systems", "base,oracle"], "unknown system(s) ['oracle']"), (["--judge-model", "/nonexistent/judge"], "judge model not found"),
     (["--safety-judge-model", "/nonexistent/guard"], "safety judge model not found"), (["--tasks", "bogus"], "unknown task 'bogus'")],
)
def test_evaluate_bad_input(trained_run, tmp_path, extra, message):
    out, data = trained_run
    cmd = [sys.executable, "-m", "alignx_demo", "evaluate", "--model", str(out), "--data-dir", str(data), "--quick",
           "--out", str(tmp_path / "e.json"), "--no-progress", *extra]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_evaluate_missing_data_file(trained_run, tmp_path):
    import shutil

    out, data = trained_run
    broken = tmp_path / "data"
    shutil.copytree(data, broken)
    (broken / "paul-rottger__exaggerated-safety__xstest_prompts.csv").unlink()
    cmd = [sys.executable, "-m", "alignx_demo", "evaluate", "--model", str(out), "--data-dir", str(broken), "--quick",
           "--systems", "base", "--out", str(tmp_path / "e.json"), "--no-progress"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 2 and "xstest_prompts.csv" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [(["train", "experts", "--out", "/nonexistent/run"], "no base model"),
     (["train", "tokenizer", "--data-dir", "/nonexistent/data", "--out", "/nonexistent/run"], "/nonexistent/data")],
)
def test_training_errors_are_clear(args, message):
    out = subprocess.run([sys.executable, "-m", "alignx_demo", *args], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 2 and "Traceback" not in out.stderr and message in out.stderr


def test_routing_losses_are_proper():
    from alignx_demo.training.finetune import routing_losses

    weights = [torch.tensor([[[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]]])] * 4  # 4 layers, batch 1, 2 tokens
    losses = routing_losses(weights, torch.tensor([[1, 1]]), torch.tensor([1]))
    assert losses["route"] == pytest.approx(-torch.log(torch.tensor(0.5)).item(), abs=1e-6)  # mean p = (0.4, 0.5, 0.1)
    uniform = [torch.full((1, 2, 3), 1 / 3)] * 4
    out = routing_losses(uniform, torch.tensor([[1, 0]]), torch.tensor([0]))
    assert out["balance"] == pytest.approx(0.0, abs=1e-6)
    assert out["entropy"] == pytest.approx(torch.log(torch.tensor(3.0)).item(), abs=1e-5)
    prompt, response = torch.tensor([[1, 0]]), torch.tensor([[0, 1]])  # one CE per span, averaged
    spans = routing_losses(weights, torch.tensor([[1, 1]]), torch.tensor([1]), (prompt, response))
    expected = -(torch.log(torch.tensor(0.2)) + torch.log(torch.tensor(0.8))).item() / 2
    assert spans["route"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.slow
def test_finetuning_loop_averages_gradients_under_accelerate_launch():
    """Two CPU processes (torchrun, gloo) draw different batches; with gradients averaged their routers stay equal."""
    import os
    import re
    import shutil

    launcher = shutil.which("torchrun")
    if launcher is None:
        pytest.skip("torchrun is not on PATH")
    worker = Path(__file__).resolve().parent / "accelerate_worker.py"
    env = os.environ | {"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([launcher, "--nproc_per_node", "2", str(worker)], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1], env=env)
    results = re.findall(r"RESULT world=(\d) in_sync=(\w+)", done.stdout)
    assert done.returncode == 0 and len(results) == 2, done.stdout[-2000:] + done.stderr[-4000:]
    assert results == [("2", "True")] * 2
