"""Fitting the calibration stack on the calibration split: temperature, natural, fractal geometry.

Router logits and features are collected per prompt token (at most `tokens_per_example` tokens
of each prompt, evenly spaced after the template prefix every prompt shares, the last always
included), from uncalibrated soft routing without any preamble — as the router sees prompts at
inference. Each token's label is its example's axis.
The parts are fitted in order, each on the output of the previous ones, all by the same NLL
objective (`nll`: the mean of the token-level and the prompt-level NLL):
1. temperature: log T_ℓ per layer, jointly, by L-BFGS;
2. natural geometry: per-layer PCA (d = 16), class means and shared covariance (+ ridge), then
   (λ1, λ2) by grid search;
3. fractal geometry: a bank of up to 2,048 calibration tokens per layer (PCA space), medians of
   the bank's own LID and k-th-neighbour distance (k = 20), then (β, β_d) by grid search on the
   tokens outside the bank and on a shifted calibration set (XSTest's calibration-split prompts,
   `readers.xstest_routing_set`), the two NLLs weighted equally — tempering off-manifold tokens
   only pays off under shift, so the fit must see some. Evaluation never uses those XSTest items.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from alignx_demo.config import AXES, RoutingSettings
from alignx_demo.data.records import AxisExample
from alignx_demo.data.templates import encode_prompt, template_prefix_length
from alignx_demo.modeling.calibration import CalibrationStack, TemperatureScaling
from alignx_demo.modeling.checkpoint import CALIBRATION_FILE, load_mocae
from alignx_demo.modeling.geometry import FractalGeometry, NaturalGeometry, knn_distances, levina_bickel_lid, project
from alignx_demo.modeling.mocae import MoCaEModel


@dataclass
class CalibrationConfig:
    """Calibration fitting settings."""

    tokens_per_example: int = 16
    pca_dim: int = 16
    ridge: float = 1e-3
    knn: int = 20
    bank_size: int = 2048
    max_len: int = 256
    seed: int = 0

    @classmethod
    def quick_recipe(cls) -> CalibrationConfig:
        return cls(tokens_per_example=8, pca_dim=8, knn=5, bank_size=128, max_len=128)


@dataclass
class RoutingData:
    """Token-level router outputs: logits (L, N, K), features (L, N, D), weights used (L, N, K),
    labels (N,), example index (N,)."""

    logits: torch.Tensor
    features: torch.Tensor
    weights: torch.Tensor
    labels: torch.Tensor
    example: torch.Tensor


@torch.no_grad()
def collect_routing(
    mocae: MoCaEModel, tokenizer: Any, examples: list[AxisExample], *, tokens_per_example: int, max_len: int,
    routing: RoutingSettings | None = None,
) -> RoutingData:
    """Router logits, features and weights of sampled prompt tokens of each example: up to
    `tokens_per_example` positions evenly spaced from the end of the shared template prefix to the
    last prompt token (always included)."""
    device = next(mocae.model.parameters()).device
    routing = routing or RoutingSettings(mode="soft", calibrated=False)
    skip = template_prefix_length(tokenizer)
    logits, features, weights, labels, owner = [], [], [], [], []
    for i, example in enumerate(examples):
        ids = encode_prompt(tokenizer, example.prompt)
        start = skip if len(ids) <= max_len else 0
        ids = ids[-max_len:]
        with mocae.routed(routing), mocae.record(features=True) as record:
            mocae(input_ids=torch.tensor([ids], device=device))
        n = len(ids)
        pick = torch.linspace(min(start, n - 1), n - 1, min(tokens_per_example, n - min(start, n - 1))).round().long().unique()
        logits.append(torch.stack([z[0][0, pick] for z in record.logits]).cpu())
        features.append(torch.stack([f[0][0, pick] for f in record.features]).cpu())
        weights.append(torch.stack([w[0][0, pick] for w in record.weights]).cpu())
        labels += [AXES.index(example.axis)] * len(pick)
        owner += [i] * len(pick)
    cat = lambda parts: torch.cat(parts, 1).float()  # noqa: E731
    return RoutingData(cat(logits), cat(features), cat(weights), torch.tensor(labels), torch.tensor(owner))


def stack_logp(stack: CalibrationStack | None, data: RoutingData, layers: range | None = None) -> torch.Tensor:
    """Log-probabilities (L, N, K) of the data under a stack (None: uncalibrated softmax)."""
    layers = layers or range(data.logits.shape[0])
    if stack is None:
        return torch.stack([F.log_softmax(data.logits[l], -1) for l in layers])
    return torch.stack([stack.probs(l, data.logits[l], data.features[l]).clamp_min(1e-12).log() for l in layers])


def nll(logp: torch.Tensor, data: RoutingData) -> float:
    """The calibration objective: ½ (token NLL + prompt NLL) of log-probabilities (L, N, K).

    Token NLL: mean over layers and sampled tokens of −log p(axis). Prompt NLL: −log of each
    prompt's routing — its weights averaged over its sampled tokens and the layers, as `evaluate`
    reports it at prompt level — averaged over prompts. Fitting the token term alone leaves the
    prompt-level average miscalibrated (a prompt's early tokens cannot know its axis, and their
    honest uncertainty flattens the average); fitting the prompt term alone would let single
    tokens be overconfident. Both are what the app shows, so both are fitted.
    """
    return float(_objective(logp, data))


def prompt_mean(p: torch.Tensor, example: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt-level routing: each prompt's mean of the token rows p (N, K), prompts in id order, and
    for each token row the index of its prompt among them."""
    ids, inverse = torch.unique(example, return_inverse=True)
    sums = torch.zeros(len(ids), p.shape[-1], dtype=p.dtype).index_add_(0, inverse, p)
    return sums / torch.bincount(inverse, minlength=len(ids))[:, None], inverse


def _objective(logp: torch.Tensor, data: RoutingData) -> torch.Tensor:
    token = -logp.gather(-1, data.labels.expand(logp.shape[0], -1)[..., None]).mean()
    prompt_p, inverse = prompt_mean(logp.exp().mean(0), data.example)
    labels = torch.zeros(len(prompt_p), dtype=torch.long).scatter_(0, inverse, data.labels)  # one label per prompt
    return (token - prompt_p.gather(-1, labels[:, None]).clamp_min(1e-12).log().mean()) / 2


def fit_temperature(data: RoutingData) -> TemperatureScaling:
    """One temperature per layer, all fitted together by L-BFGS on the calibration objective
    (its prompt term couples the layers)."""
    log_t = torch.zeros(data.logits.shape[0], requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logp = F.log_softmax(data.logits / log_t.exp()[:, None, None], dim=-1)
        loss = _objective(logp, data)
        loss.backward()
        return loss

    opt.step(closure)
    return TemperatureScaling(log_t.detach().exp().clamp(0.05, 20.0))


def _grid_search(
    part: Any, names: tuple[str, ...], grid: tuple[list[float], ...], stack: CalibrationStack, *datasets: RoutingData
) -> None:
    """Set `part`'s named settings to the grid point with the lowest NLL of stack + part, averaged
    over the datasets (each weighted equally, whatever its size)."""

    def score(values: tuple[float, ...]) -> float:
        for name, value in zip(names, values):
            setattr(part, name, value)
        trial = CalibrationStack(stack.temperature, [*stack.parts, part])
        return sum(nll(stack_logp(trial, d), d) for d in datasets) / len(datasets)

    best = min(itertools.product(*grid), key=score)
    for name, value in zip(names, best):
        setattr(part, name, value)


def _pca(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    mean = x.mean(0)
    _, _, v = torch.linalg.svd(x - mean, full_matrices=False)
    return mean, v[: min(dim, v.shape[0])]


def fit_natural(data: RoutingData, stack: CalibrationStack, cfg: CalibrationConfig) -> NaturalGeometry:
    n_layers, k = data.logits.shape[0], len(AXES)
    means, comps, class_means, precisions, priors = [], [], [], [], []
    for layer in range(n_layers):
        mean, comp = _pca(data.features[layer], cfg.pca_dim)
        u = project(data.features[layer], mean, comp)
        mus = torch.stack([u[data.labels == c].mean(0) if (data.labels == c).any() else u.mean(0) for c in range(k)])
        centered = u - mus[data.labels]
        cov = centered.T @ centered / max(len(u) - k, 1) + cfg.ridge * torch.eye(u.shape[1])
        counts = torch.bincount(data.labels, minlength=k).float() + 1.0
        means.append(mean), comps.append(comp), class_means.append(mus)
        precisions.append(torch.linalg.inv(cov)), priors.append((counts / counts.sum()).log())
    part = NaturalGeometry(torch.stack(means), torch.stack(comps), torch.stack(class_means), torch.stack(precisions), torch.stack(priors))
    _grid_search(part, ("lambda1", "lambda2"), ([0.2, 0.4, 0.6, 0.8, 1.0], [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]), stack, data)
    return part


def fit_fractal(
    data: RoutingData, stack: CalibrationStack, natural: NaturalGeometry, cfg: CalibrationConfig, shifted: RoutingData | None = None
) -> FractalGeometry:
    n_layers, n = data.logits.shape[0], data.labels.shape[0]
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(n, generator=gen)
    in_bank = order[: min(cfg.bank_size, n // 2)]
    rest = order[len(in_bank):]
    banks, lid_med, dist_med = [], [], []
    k = min(cfg.knn, len(in_bank) - 1)
    for layer in range(n_layers):
        bank = project(data.features[layer, in_bank], natural.mean[layer], natural.components[layer])
        dist = knn_distances(bank, bank, k, exclude_self=True)
        banks.append(bank)
        lid_med.append(levina_bickel_lid(dist).median())
        dist_med.append(dist[:, -1].median().clamp_min(1e-6))
    part = FractalGeometry(natural.mean, natural.components, torch.stack(banks), torch.stack(lid_med), torch.stack(dist_med), k=k)
    held = RoutingData(data.logits[:, rest], data.features[:, rest], data.weights[:, rest], data.labels[rest], data.example[rest])
    datasets = [held] + ([shifted] if shifted is not None and len(shifted.labels) else [])
    _grid_search(part, ("beta", "beta_dist"), ([0.0, 0.25, 0.5, 1.0, 2.0, 4.0], [0.0, 0.5, 1.0, 2.0, 4.0]), stack, *datasets)
    return part


def fit_calibration(
    data: RoutingData, cfg: CalibrationConfig, shifted: RoutingData | None = None
) -> tuple[CalibrationStack, dict[str, float]]:
    """Fit all three parts in order; return the stack and the calibration-split NLL after each
    (and, with a shifted set, the shifted set's NLL after each)."""
    report = {"uncalibrated": nll(stack_logp(None, data), data)}
    stack = CalibrationStack(fit_temperature(data))
    report["temperature"] = nll(stack_logp(stack, data), data)
    natural = fit_natural(data, stack, cfg)
    stack = CalibrationStack(stack.temperature, [natural])
    report["natural"] = nll(stack_logp(stack, data), data)
    fractal = fit_fractal(data, stack, natural, cfg, shifted)
    full = CalibrationStack(stack.temperature, [natural, fractal])
    report["fractal"] = nll(stack_logp(full, data), data)
    if shifted is not None and len(shifted.labels):
        report["shifted_calibration_set"] = {
            "uncalibrated": nll(stack_logp(None, shifted), shifted),
            "natural": nll(stack_logp(stack, shifted), shifted),
            "fractal": nll(stack_logp(full, shifted), shifted),
        }
    return full, report


def calibrate(
    out: str | Path, examples: list[AxisExample], cfg: CalibrationConfig, *, shifted: list[AxisExample] | None = None,
    load_in_4bit: bool = False,
) -> dict[str, Any]:
    """Fit the calibration of the checkpoint in `out` on its calibration split (plus a shifted
    calibration set for the fractal part) and save it."""
    out = Path(out)
    loaded = load_mocae(out, load_in_4bit=load_in_4bit)
    cal = [e for e in examples if e.split == "calibration" and e.axis in AXES]
    collect = lambda items: collect_routing(  # noqa: E731
        loaded.mocae, loaded.tokenizer, items, tokens_per_example=cfg.tokens_per_example, max_len=cfg.max_len
    )
    stack, report = fit_calibration(collect(cal), cfg, collect(shifted) if shifted else None)
    stack.save(out / CALIBRATION_FILE)
    summary = {
        "config": asdict(cfg),
        "examples": len(cal),
        "shifted_examples": len(shifted or []),
        "calibration_split_nll": report,
        "temperatures": stack.temperature.temperatures.tolist(),
        "natural": stack.parts[0].settings(),
        "fractal": stack.parts[1].settings(),
    }
    (out / "logs").mkdir(exist_ok=True)
    (out / "logs" / "calibration_summary.json").write_text(json.dumps(summary, indent=1))
    return summary
