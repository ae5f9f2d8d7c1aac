"""MoCaE injection: equivalence with the base, with PEFT, and the routing modes."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES, VOCAB, randomize_mocae, tiny_model

from alignx_demo.config import AXES, RoutingSettings
from alignx_demo.modeling import MoCaEModel, UnsupportedModelError, save_mocae
from alignx_demo.modeling.calibration import CalibrationStack, TemperatureScaling
from alignx_demo.modeling.layer import MoCaELinear

IDS = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))


def logits(model, settings: RoutingSettings | None = None) -> torch.Tensor:
    with torch.no_grad():
        if settings is None:
            return model(input_ids=IDS).logits
        with model.routed(settings):
            return model(input_ids=IDS).logits


def assert_close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> None:
    err = (a - b).abs().max() / b.abs().max()
    assert err <= rel, f"relative error {err:.2e}"


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_experts_equal_base(family):
    base = tiny_model(family)
    expected = logits(base)
    mocae = MoCaEModel(tiny_model(family))
    for mode in ("soft", "top1"):
        assert torch.equal(logits(mocae, RoutingSettings(mode=mode)), expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_one_hot_routing_equals_peft_adapter(family, tmp_path, tokenizer):
    from peft import PeftModel

    mocae = MoCaEModel(tiny_model(family))
    randomize_mocae(mocae)
    save_mocae(mocae, tokenizer, tmp_path / "ckpt")
    for k, axis in enumerate(AXES):
        prior = tuple(1.0 if j == k else 0.0 for j in range(3))
        ours = logits(mocae, RoutingSettings(axis_prior=prior))
        peft = PeftModel.from_pretrained(tiny_model(family), str(tmp_path / "ckpt" / "experts" / axis)).eval()
        with torch.no_grad():
            theirs = peft(input_ids=IDS).logits
        assert_close(ours, theirs)
        assert not torch.allclose(ours, logits(tiny_model(family)), atol=1e-3), "expert had no effect"


def test_soft_mix_is_weighted_sum_of_deltas():
    mocae = MoCaEModel(tiny_model("llama"))
    randomize_mocae(mocae)
    name, module = next(iter(mocae.expert_modules.items()))
    x = torch.randn(2, 5, module.in_features)
    w = torch.softmax(torch.randn(2, 5, 3), dim=-1)
    module.slot.weights = w
    with torch.no_grad():
        fused = module(x) - module.base(x)
        expected = sum(
            w[..., k : k + 1] * module.scaling * (x @ module.expert(k)[0].T @ module.expert(k)[1].T) for k in range(3)
        )
    assert_close(fused, expected)


def test_experts_in_another_dtype_than_the_base_add_the_scaled_mix():
    """A bf16 base with fp32 experts (training on a half-precision base) takes the path that adds the
    experts' output in the base's dtype: same mix, scaling included."""
    mocae = MoCaEModel(tiny_model("llama").to(torch.bfloat16), expert_dtype=torch.float32)
    randomize_mocae(mocae)
    module = next(iter(mocae.expert_modules.values()))
    assert module.lora_A.dtype == torch.float32 and module.base.weight.dtype == torch.bfloat16
    x = torch.randn(2, 5, module.in_features, dtype=torch.bfloat16)
    w = torch.softmax(torch.randn(2, 5, 3), dim=-1)
    module.slot.weights = w
    with torch.no_grad():
        delta = module(x).float() - module.base(x).float()
        expected = sum(w[..., k : k + 1] * module.scaling * (x.float() @ module.expert(k)[0].T @ module.expert(k)[1].T)
                       for k in range(3))
    assert_close(delta, expected, rel=2e-2)  # bf16 rounding of the sum


def test_one_matmul_per_stacked_expert_matrix_per_target(monkeypatch):
    """Each target module runs one matmul giving all three experts' A·x and one with the stacked B,
    whatever the routing: never three forwards."""
    mocae = MoCaEModel(tiny_model("llama"))
    randomize_mocae(mocae)
    expected = logits(mocae, RoutingSettings(mode="soft"))
    calls = []
    real_linear = torch.nn.functional.linear

    def role(w):
        for name, m in mocae.expert_modules.items():
            if w is m.lora_A:
                return name, "A"
            if w is m.lora_B or w._base is m.lora_B:
                return name, "B"
        return None

    def counting_linear(x, w, b=None):
        calls.append(role(w))
        return real_linear(x, w, b)

    monkeypatch.setattr(torch.nn.functional, "linear", counting_linear)
    for mode in ("soft", "top1"):
        calls.clear()
        logits(mocae, RoutingSettings(mode=mode))
        expert_calls = [c for c in calls if c is not None]
        assert sorted(expert_calls) == sorted((n, part) for n in mocae.expert_modules for part in "AB")
    monkeypatch.undo()
    assert_close(logits(mocae, RoutingSettings(mode="soft")), expected)


def test_dtype_conversion_keeps_the_output_and_experts_train():
    """`.to(float64)` and back changes nothing but rounding, and with gradients on A and B both train."""
    mocae = MoCaEModel(tiny_model("llama"))
    randomize_mocae(mocae)
    before = logits(mocae, RoutingSettings())
    mocae.to(torch.float64)
    assert_close(logits(mocae, RoutingSettings()).float(), before)
    mocae.to(torch.float32)
    params = mocae.expert_parameters()
    for p in params:
        p.requires_grad_(True)
    with mocae.routed(RoutingSettings()):
        mocae(input_ids=IDS).logits.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def test_top1_matches_forcing_the_argmax_expert():
    mocae = MoCaEModel(tiny_model("llama"))
    randomize_mocae(mocae)
    with torch.no_grad():
        for router in mocae.routers:  # make expert 2 (honest) the argmax everywhere
            router.proj.bias.copy_(torch.tensor([0.0, 0.0, 50.0]))
    top1 = logits(mocae, RoutingSettings(mode="top1"))
    forced = logits(mocae, RoutingSettings(axis_prior=(0, 0, 1)))
    assert torch.equal(top1, forced)
    assert not torch.allclose(top1, logits(mocae, RoutingSettings(axis_prior=(1, 0, 0))))


def test_calibration_changes_only_routing():
    """Temperature T on the calibrated path equals dividing the router's W and b by T, uncalibrated."""
    temps = torch.tensor([2.0, 0.5])
    mocae = MoCaEModel(tiny_model("llama"), calibration=CalibrationStack(TemperatureScaling(temps)))
    randomize_mocae(mocae)
    calibrated = logits(mocae, RoutingSettings(calibrated=True))
    uncalibrated = logits(mocae, RoutingSettings(calibrated=False))
    assert not torch.allclose(calibrated, uncalibrated)
    with mocae.record() as rec, mocae.routed(RoutingSettings(calibrated=True)), torch.no_grad():
        mocae(input_ids=IDS)
    with torch.no_grad():
        for layer, router in enumerate(mocae.routers):
            router.proj.weight /= temps[layer]
            router.proj.bias /= temps[layer]
    assert_close(logits(mocae, RoutingSettings(calibrated=False)), calibrated)
    with mocae.record() as rec2, mocae.routed(RoutingSettings(calibrated=False)), torch.no_grad():
        mocae(input_ids=IDS)
    assert_close(rec2.stacked_weights(), rec.stacked_weights())


def test_prior_blend_and_weights_sum_to_one():
    mocae = MoCaEModel(tiny_model("llama"))
    randomize_mocae(mocae)
    with mocae.record() as raw, torch.no_grad():
        mocae(input_ids=IDS)
    with mocae.record() as blended, mocae.routed(RoutingSettings(axis_prior=(1, 0, 0), prior_blend=0.5)), torch.no_grad():
        mocae(input_ids=IDS)
    # layer 0 sees the same input either way; later layers see the blended mixture's output
    expected = 0.5 * raw.stacked_weights()[0] + 0.5 * torch.tensor([1.0, 0.0, 0.0])
    assert_close(blended.stacked_weights()[0], expected)
    assert torch.allclose(raw.stacked_weights().sum(-1), torch.ones(1))


@pytest.mark.parametrize(
    "prior, message",
    [((1, -1, 1), "non-negative"), ((1, float("nan"), 1), "finite"), ((1,) * 7, "one number per axis"),
     ("a,b,c", "must be numbers"), ((0, 0, 0), "all be zero"), (object(), "list of numbers")],
)
def test_bad_axis_prior_is_a_clear_error(prior, message):
    with pytest.raises(ValueError, match=message):
        RoutingSettings(axis_prior=prior)


def test_a_prior_must_fit_the_models_axes(tmp_path):
    from alignx_demo.config import AXES, validate_axis_prior

    with pytest.raises(ValueError, match=r"exactly 3 numbers \(helpful, harmless, honest\)"):
        validate_axis_prior((1, 1), AXES)
    mocae = MoCaEModel(tiny_model())
    with pytest.raises(ValueError, match="axis prior has 2 numbers, but this model has 3 axes"), torch.no_grad(), \
            mocae.routed(RoutingSettings(axis_prior=(1, 1))):
        mocae(input_ids=torch.tensor([[5, 6, 7]]))


def test_unknown_architecture_lists_supported_families():
    from transformers import OPTConfig, OPTForCausalLM

    opt = OPTForCausalLM(OPTConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2,
                                   word_embed_proj_dim=32, max_position_embeddings=64))
    with pytest.raises(UnsupportedModelError, match="model type 'opt' is not supported; supported families: llama"):
        MoCaEModel(opt)


def test_gpt2_conv1d_is_wrapped_and_router_counts():
    mocae = MoCaEModel(tiny_model("gpt2"))
    assert all(isinstance(m, MoCaELinear) for m in mocae.expert_modules.values())
    assert sorted({n.split(".")[-1] for n in mocae.expert_modules}) == ["c_fc", "c_proj"]
    assert not any(".attn." in n for n in mocae.expert_modules)
    counts = mocae.count_parameters()
    assert counts["routers"] == mocae.n_layers * (2 * 64 * 3 + 3)  # token features and their causal mean


def recorded_weights(model, settings: RoutingSettings) -> torch.Tensor:
    with torch.no_grad(), model.routed(settings), model.record() as rec:
        model(input_ids=IDS)
    return rec.stacked_weights()


def test_routing_transform_acts_after_routing_nests_and_is_undone():
    """`transformed` changes the weights the experts use, not the weights recorded; nested transforms apply
    outermost first; leaving the context (even by an error) restores the model's own routing."""
    mocae = MoCaEModel(tiny_model("llama"))
    randomize_mocae(mocae)
    settings = RoutingSettings()
    own, own_weights = logits(mocae, settings), recorded_weights(mocae, settings)
    force_helpful = lambda _layer, w: torch.zeros_like(w).index_fill_(-1, torch.tensor([0]), 1.0)  # noqa: E731
    seen = []
    with mocae.transformed(lambda layer, w: seen.append(layer) or w.flip(-1)), mocae.transformed(force_helpful):
        forced, forced_weights = logits(mocae, settings), recorded_weights(mocae, settings)
    assert torch.equal(forced, logits(mocae, RoutingSettings(axis_prior=(1.0, 0.0, 0.0)))), "the inner transform acts last"
    assert seen == list(range(mocae.n_layers)) * 2
    assert torch.equal(forced_weights[0], own_weights[0]), "record() keeps the model's own weights"
    with pytest.raises(RuntimeError, match="boom"), mocae.transformed(force_helpful):
        raise RuntimeError("boom")
    assert torch.equal(logits(mocae, settings), own)
