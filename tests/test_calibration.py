"""Calibration fitting: it must help on data it was not fitted on, at token and at run level."""

from __future__ import annotations

import pytest
import torch

from alignx_demo.analysis.routing import RoutingData
from alignx_demo.modeling.calibration import CalibrationStack, PooledTemperature, TemperatureScaling
from alignx_demo.training.calibrate import IN_DISTRIBUTION_SLACK, CalibrationConfig, fit_calibration, prompt_nll, run_weights, token_logp, token_nll

CFG = CalibrationConfig(pca_dim=4, knn=5, bank_size=256)


def synthetic_routing(seed: int, prompts: int = 120, tokens: int = 12, layers: int = 2) -> RoutingData:
    """Overconfident routers: logits 4x a noisy class signal that grows along the prompt (early
    tokens know little), the noise mostly shared by the layers (they read the same token, so the
    layer mean the page shows stays overconfident), features carrying the class. Run-level means are
    then underconfident."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (prompts,), generator=gen).repeat_interleave(tokens)
    position = torch.arange(tokens).repeat(prompts)
    signal = torch.nn.functional.one_hot(labels, 3).float() * (0.2 + position[:, None] / tokens)
    noise = 0.55 * torch.randn(1, len(labels), 3, generator=gen) + 0.25 * torch.randn(layers, len(labels), 3, generator=gen)
    logits = 4.0 * (signal + noise)
    features = torch.cat([signal.expand(layers, -1, -1), torch.randn(layers, len(labels), 5, generator=gen)], -1)
    features = features + 0.3 * torch.randn(features.shape, generator=gen)
    return RoutingData(logits, features, logits.softmax(-1), labels, torch.arange(prompts).repeat_interleave(tokens), position)


@pytest.mark.slow
def test_calibration_helps_on_held_out_prompts_at_token_and_run_level():
    stack, report = fit_calibration(synthetic_routing(0), CFG)
    held = synthetic_routing(1)  # same process, other prompts: never seen by any fit
    raw, calibrated = token_logp(None, held), token_logp(stack, held)
    assert token_nll(calibrated, held) < 0.9 * token_nll(raw, held)
    raw_run = run_weights(raw.exp(), held)
    assert prompt_nll(run_weights(calibrated.exp(), held, stack), held) < 0.9 * prompt_nll(raw_run, held)
    assert report["select_prompt_nll"]["pooled"] < report["select_prompt_nll"]["token_parts_unpooled"]


def test_fit_and_select_parts_share_no_prompt():
    fit, select = synthetic_routing(0).split_by_prompt(0.6)
    assert not set(fit.example.tolist()) & set(select.example.tolist())
    assert len(set(fit.example.tolist())) == 72


def test_pooled_temperature_sharpens_an_underconfident_mean():
    mean = torch.tensor([[0.5, 0.25, 0.25]])
    sharp = PooledTemperature(0.5).pool(mean)
    assert sharp[0, 0] > 0.6 and torch.allclose(sharp.sum(-1), torch.ones(1))
    assert torch.equal(PooledTemperature(0.5, enabled=False).pool(mean), mean)


def test_stack_moves_with_to_and_saves_shared_tensors_once(tmp_path):
    stack, _ = fit_calibration(synthetic_routing(0), CFG)
    stack.to(torch.float64)
    tensors = [b for part in stack._all() for _, b in part.named_buffers()]
    assert tensors and all(t.dtype == torch.float64 for t in tensors)
    stack.to(torch.float32)
    path = tmp_path / "calibration.safetensors"
    stack.save(path)
    from safetensors.torch import load_file

    stored = load_file(str(path))
    assert "fractal.components" not in stored and "natural.components" in stored  # one copy of the PCA
    loaded = CalibrationStack.load(path)
    data = synthetic_routing(2)
    torch.testing.assert_close(token_logp(loaded, data), token_logp(stack, data))
    assert loaded.names == ["temperature", "natural", "fractal", "pooled"]


def test_old_files_without_a_pooled_part_still_load(tmp_path):
    CalibrationStack(TemperatureScaling(torch.tensor([2.0]))).save(tmp_path / "c.safetensors")
    loaded = CalibrationStack.load(tmp_path / "c.safetensors")
    assert loaded.pooled is None and torch.equal(loaded.pool(torch.tensor([0.5, 0.5])), torch.tensor([0.5, 0.5]))


def test_token_nll_scores_the_layer_mean_weights_a_chip_shows():
    data = synthetic_routing(2, prompts=6, tokens=3, layers=3)
    logp = token_logp(None, data)
    shown = logp.exp().mean(0)  # (N, K): what a chip shows, averaged over layers
    expected = -shown.gather(-1, data.labels[:, None]).log().mean()
    assert torch.allclose(token_nll(logp, data), expected, atol=1e-6)


@pytest.mark.slow
def test_zero_weighted_geometry_terms_are_left_out_exactly(monkeypatch):
    """A fitted λ2 = 0 or β = 0 gives what the full formula gives, bit for bit, without computing the
    posterior, the LID or (both βs zero) the neighbour search it would multiply by zero."""
    from alignx_demo.modeling import geometry

    stack, _ = fit_calibration(synthetic_routing(0), CFG)
    natural, fractal = stack.parts
    data = synthetic_routing(3)
    logp, features = torch.log_softmax(data.logits[0, :40], -1), data.features[0, :40]

    def full_formula():  # the parts' definitions with every term computed
        mixed = natural.lambda1 * logp + natural.lambda2 * natural.log_posterior(0, features)
        u = geometry.project(features, fractal.mean[0], fractal.components[0])
        dist = geometry.knn_distances(u, fractal.bank[0], fractal.k)
        tau = (1.0 + fractal.beta * (geometry.levina_bickel_lid(dist) / fractal.lid_median[0] - 1).clamp_min(0)
               + fractal.beta_dist * (dist[:, -1] / fractal.dist_median[0] - 1).clamp_min(0))
        return torch.log_softmax(torch.log_softmax(mixed, -1) / tau.unsqueeze(-1), -1)

    def parts():
        return fractal.apply(0, natural.apply(0, logp, features), features)

    for lambda2, beta, beta_dist in ((0.4, 1.0, 0.5), (0.0, 0.0, 0.25), (0.0, 0.0, 0.0)):
        natural.lambda2, fractal.beta, fractal.beta_dist = lambda2, beta, beta_dist
        expected = full_formula()
        with monkeypatch.context() as patch:
            if not lambda2:
                patch.setattr(natural, "log_posterior", lambda *a: 1 / 0)
            if not beta:
                patch.setattr(geometry, "levina_bickel_lid", lambda *a: 1 / 0)
            if not (beta or beta_dist):
                patch.setattr(geometry, "knn_distances", lambda *a, **k: 1 / 0)
            assert torch.equal(parts(), expected)


def test_calibrate_writes_only_when_done_and_marks_the_routers_it_was_fitted_for(checkpoint, monkeypatch):
    """A failed fit leaves the old calibration; a finished one is marked with its routers' fingerprint,
    so routers retrained later make the loader refuse it."""
    import json

    import pytest
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from alignx_demo.modeling import CheckpointError, load_mocae
    from alignx_demo.modeling.provenance import fingerprint, trained_metadata
    from alignx_demo.training import calibrate as stage

    monkeypatch.setattr(stage, "eval_prompts", lambda *a, **k: [])
    monkeypatch.setattr(stage, "collect_routing", lambda *a, **k: synthetic_routing(0, prompts=30, tokens=6))
    monkeypatch.setattr(stage, "LAMBDA_GRID", ([1.0], [0.0]))  # the files matter here, not the search
    monkeypatch.setattr(stage, "BETA_GRID", ([0.0], [0.0]))
    before = (checkpoint / "calibration.safetensors").read_bytes()
    monkeypatch.setattr(stage, "fit_calibration", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("fit failed")))
    with pytest.raises(RuntimeError, match="fit failed"):
        stage.calibrate(checkpoint, [], CFG)
    assert (checkpoint / "calibration.safetensors").read_bytes() == before
    monkeypatch.setattr(stage, "fit_calibration", fit_calibration)
    summary = stage.calibrate(checkpoint, [], CFG)
    routers = load_file(str(checkpoint / "router.safetensors"))
    with safe_open(str(checkpoint / "calibration.safetensors"), "pt") as handle:
        marker = json.loads(handle.metadata()["alignx_trained"])
    assert marker["stage"] == "calibrate" and marker["router"] == fingerprint(routers)
    assert json.loads((checkpoint / "logs" / "calibration_summary.json").read_text())["report"] == summary["report"]
    assert load_mocae(checkpoint, load_in_4bit=False).mocae.calibration.names == ["temperature", "natural", "fractal", "pooled"]
    save_file({k: v + 0.01 for k, v in routers.items()}, str(checkpoint / "router.safetensors"),
              metadata={"format": "pt", **trained_metadata("router", steps=1)})
    with pytest.raises(CheckpointError, match="fitted for other routers"):
        load_mocae(checkpoint, load_in_4bit=False)


def shifted_routing(seed: int) -> RoutingData:
    """Prompts from elsewhere: features far from every calibration-split token, and routers as confident
    as in distribution but wrong on about half the prompts — what held-out sources do to the routers."""
    data = synthetic_routing(seed, prompts=60)
    gen = torch.Generator().manual_seed(seed + 100)
    wrong = (torch.rand(60, generator=gen) < 0.5).repeat_interleave(12)
    labels = torch.where(wrong, (data.labels + 1) % 3, data.labels)
    return RoutingData(data.logits, data.features + 3.0, data.weights, labels, data.example, data.position)


def test_settings_chosen_on_a_shift_set_hold_on_new_shifted_prompts():
    """Choosing the settings on the shift set too (never fitting on it) makes calibration hold on other
    shifted prompts, where settings chosen in distribution only leave the routers overconfident."""
    home, _ = fit_calibration(synthetic_routing(0), CFG)
    shifted, report = fit_calibration(synthetic_routing(0), CFG, shifted_routing(1))
    fresh = shifted_routing(2)
    assert token_nll(token_logp(shifted, fresh), fresh) < 0.8 * token_nll(token_logp(home, fresh), fresh)
    assert report["shift_tokens"] == 720 and report["shift"]["token_nll"]["calibrated"] < report["shift"]["token_nll"]["uncalibrated"]
    assert torch.equal(home.temperature.temperatures, shifted.temperature.temperatures)  # fitted on the fit part alone
    for search in ("lambda_search", "beta_search"):  # never bought with in-distribution calibration
        for level in (0, 1):  # token, prompt
            assert report[search]["scores"][level] <= (1 + IN_DISTRIBUTION_SLACK) * report[search]["identity_scores"][level]


def test_a_shift_set_the_routers_cannot_read_does_not_flatten_calibration_in_distribution():
    """Labels the routers cannot read at all pull every setting toward uniform weights; the choice is bounded by
    the part switched off on the in-distribution select part, so calibration still helps there."""
    noise = synthetic_routing(5, prompts=60)
    noise = RoutingData(noise.logits, noise.features + 3.0, noise.weights, torch.randint(0, 3, noise.labels.shape,
                        generator=torch.Generator().manual_seed(9)), noise.example, noise.position)
    _, report = fit_calibration(synthetic_routing(0), CFG, noise)
    for search in ("lambda_search", "beta_search"):
        for level in (0, 1):  # token, prompt
            assert report[search]["scores"][level] <= (1 + IN_DISTRIBUTION_SLACK) * report[search]["identity_scores"][level]
    token = report["select_token_nll"]
    assert token["fractal"] < 0.95 * token["uncalibrated"]
