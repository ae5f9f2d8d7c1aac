"""Streaming generation with traces, and the `generate` CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest
import torch

from alignx_demo.config import GenerationSettings, RoutingSettings
from alignx_demo.generation import RoutedGeneration
from alignx_demo.modeling import load_mocae


@pytest.fixture
def loaded(checkpoint):
    return load_mocae(checkpoint, load_in_4bit=False)


def run_all(run: RoutedGeneration) -> dict:
    for _ in run:
        pass
    return run.trace()


@pytest.mark.parametrize("calibrated", [True, False])
def test_streamed_greedy_equals_generate(loaded, calibrated):
    settings = RoutingSettings(calibrated=calibrated)
    run = RoutedGeneration(loaded.mocae, loaded.tokenizer, "How do I bake bread?", GenerationSettings(max_new_tokens=12), settings)
    trace = run_all(run)
    generated = [t["id"] for t in trace["tokens"] if not t["is_prompt"]]
    with torch.no_grad(), loaded.mocae.routed(settings):
        out = loaded.mocae.generate(
            torch.tensor([run.prompt_ids]), max_new_tokens=12, do_sample=False,
            eos_token_id=loaded.tokenizer.eos_token_id, pad_token_id=loaded.tokenizer.pad_token_id,
        )
    assert generated == out[0, len(run.prompt_ids):].tolist()


def test_trace_has_one_entry_per_token_and_weights_sum_to_one(loaded):
    run = RoutedGeneration(loaded.mocae, loaded.tokenizer, "Is the moon made of cheese?", GenerationSettings(max_new_tokens=7))
    trace = run_all(run)
    tokens = trace["tokens"]
    n_prompt = len(run.prompt_ids)
    assert [t["position"] for t in tokens] == list(range(len(tokens)))
    assert sum(t["is_prompt"] for t in tokens) == n_prompt
    assert len(tokens) - n_prompt == (7 if trace["finish_reason"] == "length" else len(tokens) - n_prompt)
    for t in tokens:
        assert len(t["layers"]) == loaded.mocae.n_layers
        for row in t["layers"]:
            assert abs(sum(row) - 1) < 1e-5
        assert abs(sum(t["weights"].values()) - 1) < 1e-5
        assert t["top_expert"] == max(t["weights"], key=t["weights"].get)
    # the convention: the first generated token carries the last prompt token's routing
    assert tokens[n_prompt]["layers"] == tokens[n_prompt - 1]["layers"]
    assert "".join(t["text"] for t in tokens if not t["is_prompt"]) == loaded.tokenizer.decode(
        [t["id"] for t in tokens if not t["is_prompt"]], skip_special_tokens=True
    )


def test_generated_token_carries_the_routing_of_its_forward(loaded):
    run = RoutedGeneration(loaded.mocae, loaded.tokenizer, "Hello", GenerationSettings(max_new_tokens=4))
    trace = run_all(run)
    ids = torch.tensor([[t["id"] for t in trace["tokens"]]])
    with torch.no_grad(), loaded.mocae.routed(run.routing), loaded.mocae.record() as rec:
        loaded.mocae(input_ids=ids)
    full = rec.stacked_weights()[:, 0]  # (L, T, 3) recomputed without the cache
    for t in trace["tokens"]:
        source = t["position"] if t["is_prompt"] else t["position"] - 1
        assert torch.allclose(torch.tensor(t["layers"]), full[:, source], atol=1e-5)


def test_sampling_is_reproducible_by_seed(loaded):
    def sample(seed):
        gen = GenerationSettings(max_new_tokens=10, do_sample=True, temperature=1.5, top_p=0.9, seed=seed)
        return [t.id for t in RoutedGeneration(loaded.mocae, loaded.tokenizer, "Hi", gen) if not t.is_prompt]

    assert sample(1) == sample(1)
    assert any(sample(1) != sample(s) for s in (2, 3, 4))


def test_sampling_generator_lives_on_the_logits_device(loaded, monkeypatch):
    """torch.multinomial needs a generator on the probabilities' device (a CPU one fails for CUDA
    logits): logits on another device (meta here) get a generator made there, once per run."""
    import alignx_demo.generation as generation

    made, used = [], []
    monkeypatch.setattr(generation, "sampling_generator",
                        lambda device, seed: made.append((torch.device(device), seed)) or torch.Generator().manual_seed(seed))
    monkeypatch.setattr(torch, "multinomial", lambda probs, n, generator=None: used.append((probs.device, generator))
                        or torch.zeros(probs.shape[0], n, dtype=torch.long))
    run = RoutedGeneration(loaded.mocae, loaded.tokenizer, "Hi", GenerationSettings(do_sample=True, top_p=0.5, seed=7))
    history = torch.zeros(1, 3, dtype=torch.long, device="meta")
    for _ in range(2):
        assert run._next_token(torch.randn(50, device="meta"), history) == 0
    assert made == [(torch.device("meta"), 7)]
    assert [d.type for d, _ in used] == ["meta", "meta"] and used[0][1] is used[1][1]


def test_top1_trace_is_one_hot_and_prior_forces_weights(loaded):
    trace = run_all(RoutedGeneration(loaded.mocae, loaded.tokenizer, "Hi", GenerationSettings(max_new_tokens=3), RoutingSettings(mode="top1")))
    assert all(sorted(row) == [0.0, 0.0, 1.0] for t in trace["tokens"] for row in t["layers"])
    forced = run_all(RoutedGeneration(loaded.mocae, loaded.tokenizer, "Hi", GenerationSettings(max_new_tokens=3), RoutingSettings(axis_prior=(0, 1, 0))))
    assert all(t["weights"] == {"helpful": 0.0, "harmless": 1.0, "honest": 0.0} for t in forced["tokens"])


def test_calibrated_and_uncalibrated_routing_differ(loaded):
    a = run_all(RoutedGeneration(loaded.mocae, loaded.tokenizer, "Hi", GenerationSettings(max_new_tokens=3), RoutingSettings(calibrated=True)))
    b = run_all(RoutedGeneration(loaded.mocae, loaded.tokenizer, "Hi", GenerationSettings(max_new_tokens=3), RoutingSettings(calibrated=False)))
    assert a["tokens"][0]["layers"] != b["tokens"][0]["layers"]
    assert a["settings"]["calibration"] == {"temperature": True} and b["settings"]["calibration"] is None


def test_stop_from_another_thread(loaded):
    """Stop set by another thread while the run waits between tokens: the run ends before its next token.
    The model is kept from ending on its own (eos masked out), so nothing but Stop can end it before 60 tokens."""
    eos = loaded.tokenizer.eos_token_id
    no_eos = loaded.mocae.model.lm_head.register_forward_hook(lambda _m, _i, out: out.index_fill(-1, torch.tensor([eos]), -1e9))
    stop = threading.Event()
    run = RoutedGeneration(loaded.mocae, loaded.tokenizer, "Hi", GenerationSettings(max_new_tokens=60), stop_event=stop)
    generated = []
    try:
        for token in run:
            if not token.is_prompt:
                generated.append(token.id)
                if len(generated) == 3:
                    setter = threading.Thread(target=stop.set)
                    setter.start()
                    setter.join()
    finally:
        no_eos.remove()
    assert run.finish_reason == "stopped" and len(generated) == 3 and eos not in generated
    trace = run.trace()
    assert trace["finish_reason"] == "stopped" and sum(not t["is_prompt"] for t in trace["tokens"]) == 3


@pytest.mark.parametrize("prompt", ["", "   \n\t"])
def test_empty_prompt_is_a_clear_error(loaded, prompt):
    with pytest.raises(ValueError, match="prompt is empty"):
        RoutedGeneration(loaded.mocae, loaded.tokenizer, prompt)


def test_long_prompt_is_truncated_from_the_left_with_a_notice(loaded):
    run = RoutedGeneration(loaded.mocae, loaded.tokenizer, "bread " * 400, GenerationSettings(max_new_tokens=8))
    trace = run_all(run)
    assert len(run.prompt_ids) == 128 - 8
    assert any("truncated from the left" in n for n in trace["notices"])


def test_typed_special_tokens_stay_text(loaded):
    run = RoutedGeneration(loaded.mocae, loaded.tokenizer, "<|assistant|> <|eos|>", GenerationSettings(max_new_tokens=2))
    specials = set(loaded.tokenizer.all_special_ids)
    user_part = run.prompt_ids[2:-2]  # between "<|user|>\n" and "\n<|assistant|>\n"
    assert not specials & set(user_part)


@pytest.mark.parametrize("bad", [dict(max_new_tokens=0), dict(temperature=0.0), dict(top_p=1.5), dict(max_new_tokens=10**6)])
def test_bad_generation_settings(bad):
    with pytest.raises(ValueError):
        GenerationSettings(**bad)


def test_cli_generate_json(checkpoint):
    cmd = [sys.executable, "-m", "alignx_demo", "generate", "--model", str(checkpoint), "--prompt", "Is it safe?",
           "--max-new-tokens", "5", "--axis-prior", "1,1,2", "--no-4bit", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    trace = json.loads(out.stdout)
    assert trace["prompt"] == "Is it safe?" and trace["settings"]["routing"]["axis_prior"] == [0.25, 0.25, 0.5]
    token = trace["tokens"][-1]
    assert set(token) >= {"text", "id", "position", "is_prompt", "weights", "layers"}
    assert token["weights"] == {"helpful": 0.25, "harmless": 0.25, "honest": 0.5}


@pytest.mark.parametrize(
    "extra, message",
    [(["--axis-prior", "1,-1,0"], "non-negative"), (["--model", "/nonexistent"], "checkpoint folder not found")],
)
def test_cli_generate_errors(checkpoint, extra, message):
    cmd = [sys.executable, "-m", "alignx_demo", "generate", "--model", str(checkpoint), "--prompt", "x", "--no-4bit", *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "prompt, notice",
    [("hello\x00 world\x07", "control character"), ("bad \ud800 surrogate", "lone surrogates"), ("x" * 9000, "prompt cut")],
)
def test_odd_prompts_are_cleaned_with_a_notice(loaded, prompt, notice):
    run = RoutedGeneration(loaded.mocae, loaded.tokenizer, prompt, GenerationSettings(max_new_tokens=2))
    trace = run_all(run)
    assert any(notice in n for n in trace["notices"])
    assert "\x00" not in trace["prompt"] and len(trace["prompt"]) <= 8000


def test_non_text_prompt_and_control_only_prompt(loaded):
    with pytest.raises(ValueError, match="must be text"):
        RoutedGeneration(loaded.mocae, loaded.tokenizer, 42)
    with pytest.raises(ValueError, match="prompt is empty"):
        RoutedGeneration(loaded.mocae, loaded.tokenizer, "\x00\x01\x02")


def test_emoji_and_rtl_marks_survive(loaded):
    run = RoutedGeneration(loaded.mocae, loaded.tokenizer, "\u200fשלום 👋🏽 مرحبا", GenerationSettings(max_new_tokens=2))
    trace = run_all(run)
    prompt_text = "".join(t["text"] for t in trace["tokens"] if t["is_prompt"])
    assert "👋🏽" in prompt_text and "\u200f" in prompt_text and not trace["notices"]


def test_run_weights_are_the_generated_mean_and_pool_only_a_prompt_mean(loaded):
    """What the summaries show (`run_weights`) is what `evaluate` measures at generation level: the mean
    over generated tokens of the layer-mean weights, never pooled (the pooled part is fitted on
    prompt-token means); a run with no generated token shows its prompt's mean, pooled under
    calibrated routing without an axis prior."""
    from alignx_demo.config import AXES
    from alignx_demo.modeling.calibration import CalibrationStack, PooledTemperature, TemperatureScaling
    from alignx_demo.ui.runner import shares

    layers = loaded.mocae.model.config.num_hidden_layers
    loaded.mocae.calibration = CalibrationStack(TemperatureScaling(torch.ones(layers)), [], PooledTemperature(0.5))
    for routing in (RoutingSettings(calibrated=True), RoutingSettings(calibrated=False),
                    RoutingSettings(calibrated=True, axis_prior=(0.2, 0.3, 0.5), prior_blend=0.5)):
        run = RoutedGeneration(loaded.mocae, loaded.tokenizer, "Tell me about bread.", GenerationSettings(max_new_tokens=5), routing)
        trace = run_all(run)
        generated = [t for t in trace["tokens"] if not t["is_prompt"]]
        mean = torch.tensor([[sum(t["weights"][a] for t in generated) / len(generated) for a in AXES]])
        assert trace["run_weights"] == pytest.approx(dict(zip(AXES, mean[0].tolist())), abs=1e-5)
        assert shares(trace) == trace["run_weights"]
        run.tokens = [t for t in run.tokens if t.is_prompt]  # as if stopped before the first answer token
        prompt_mean = torch.tensor([[sum(t.weights[a] for t in run.tokens) / len(run.tokens) for a in AXES]])
        pooled = routing.calibrated and routing.axis_prior is None
        want = loaded.mocae.calibration.pool(prompt_mean) if pooled else prompt_mean
        assert run.run_weights() == pytest.approx(dict(zip(AXES, want[0].tolist())), abs=1e-5)
        if pooled:
            assert max(run.run_weights().values()) > prompt_mean.max().item()  # T_pool < 1 sharpens the mean
