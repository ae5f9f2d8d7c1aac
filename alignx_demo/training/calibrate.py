"""Fitting the calibration stack on the calibration split: temperature, natural and fractal
geometry (token level), and the pooled temperature (run level).

Data: the distinct calibration-split prompts of the three axes (at most `max_per_axis` each), every
prompt token after the shared template prefix, router logits and features from uncalibrated soft
routing without any preamble — as the router sees prompts at inference. Each token's label is its
prompt's axis.

The prompts are split in two, by prompt: a *fit* part (1 − `select_fraction`) on which parameters
are estimated, and a *select* part on which every setting chosen by search (λ, β) and the pooled
temperature are chosen. A setting is thus never chosen on the data its part was fitted on.
Beside the select part, a *shift* set (`data.ood.calibration_shift_set`: prompts of held-out sources
that no stage trains on and no evaluation measures) takes part in every choice with equal weight:
the geometry parts exist to handle distribution shift, and judged on in-distribution prompts alone
they were switched off (λ2 = β = 0 on the previous bundle) while calibration made the hand-written
prompts worse (ECE 0.088 raw → 0.134). Nothing is *fitted* on the shift set, and no searched λ or β
may make the in-distribution select part's token NLL or prompt NLL more than `IN_DISTRIBUTION_SLACK`
(1 %) worse than the part switched off (the identity point every grid holds): a part may help under
shift, not at the price of in-distribution calibration (unbounded, the choice on the MiniLM
candidate's routers took the select part's token NLL from 0.492 with temperature alone to 0.553, and
on synthetic data the routers cannot read it flattened everything). The pooled temperature is chosen
on both sets with no such bound.
1. temperature: log T_ℓ per layer, by L-BFGS on the token NLL of the fit part — the NLL of each
   token's layer-mean weights, what the page's chips show (`token_nll`);
2. natural geometry: per-layer PCA (d = 16), class means and shared covariance (+ ridge) on the fit
   part, equal class priors; then (λ1, λ2) by grid search on the select part's *selection score*;
3. fractal geometry: a bank of up to `bank_size` fit-part tokens per layer (PCA space), the bank's
   median LID and k-th-neighbour distance (k = 20); then (β, β_d) by grid search on the select
   part's selection score (β = β_d = 0, no tempering, is in the grid: the data decides);
4. pooled: T_pool by bounded 1-D search on the select part's prompt-level NLL, where a prompt's
   run-level weights are softmax(log(mean of its calibrated token weights) / T_pool).
Grids are wide enough that no chosen value sits at an edge that could move (the summary records
`at_edge` for each search so a reader can check).

The prompts are a mix of every source of each axis (`eval_prompts(mixed=True)`), as the routing
evaluation's are: in data order the calibration set and the eval set were different mixes
(helpful mostly dolly vs mostly LIMA), so a temperature fitted on one made the other worse.
The selection score is the token NLL plus the prompt-level NLL after the best pooled temperature:
the page shows both the per-token weights (chips) and per-run means (summaries, the compare tab),
and a part chosen on token NLL alone can sharpen most tokens toward one axis and flip whole prompts
(measured on the retrained bundle: natural geometry chosen on token NLL alone, with class priors
from the split's counts — 400 / 400 / 79 distinct helpful / harmless / honesty prompts — took
prompt-level accuracy on honesty prompts from 0.68 to 0.16; the priors are now equal). Identity
settings (λ = (1, 0), β = (0, 0)) are in the grids, so a part that cannot help both is switched off.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch.nn import functional as F

from alignx_demo.analysis.routing import RoutingData, collect_routing, prompt_labels, prompt_mean
from alignx_demo.data.records import AxisExample, eval_prompts
from alignx_demo.modeling.calibration import CalibrationStack, PooledTemperature, TemperatureScaling
from alignx_demo.modeling.checkpoint import CALIBRATION_FILE, ROUTER_FILE, load_mocae
from alignx_demo.modeling.provenance import fingerprint, trained_metadata
from alignx_demo.modeling.geometry import FractalGeometry, NaturalGeometry, knn_distances, levina_bickel_lid, project

LAMBDA_GRID = ([0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.6, 2.0], [0.0, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.4, 2.0])
BETA_GRID = ([0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0], [0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0])
IN_DISTRIBUTION_SLACK = 0.01
"""How much worse (relative) than the part switched off a setting may make the in-distribution select part's
score, for what it gains on the shift set."""


@dataclass
class CalibrationConfig:
    """Calibration fitting settings."""

    max_per_axis: int = 400
    select_fraction: float = 0.4
    pca_dim: int = 16
    ridge: float = 1e-3
    knn: int = 20
    bank_size: int = 2048
    max_len: int = 256
    seed: int = 0

    @classmethod
    def quick_recipe(cls) -> CalibrationConfig:
        return cls(max_per_axis=40, pca_dim=8, knn=5, bank_size=128, max_len=128)


def token_logp(stack: CalibrationStack | None, data: RoutingData) -> torch.Tensor:
    """Log-probabilities (L, N, K) of the data's tokens under a stack (None: uncalibrated softmax)."""
    layers = range(data.logits.shape[0])
    if stack is None:
        return torch.stack([F.log_softmax(data.logits[l], -1) for l in layers])
    return torch.stack([stack.probs(l, data.logits[l], data.features[l]).clamp_min(1e-12).log() for l in layers])


Selects = list[RoutingData]
"""The sets every setting is chosen on (the select part, then the shift set when there is one),
weighted equally whatever their sizes."""


def token_nll(logp: torch.Tensor, data: RoutingData) -> torch.Tensor:
    """Mean over tokens of −log p̄(axis), p̄ the token's weights averaged over the layers — the weights
    a chip shows and the token-level evaluation measures (the mean of the layers' NLLs instead would
    fit each layer alone: on the retrained routers it chose T ≈ 2.4 per layer, and the layer mean,
    already softened by averaging, came out underconfident: token ECE 0.059 raw → 0.073 on eval)."""
    picked = logp.gather(-1, data.labels.expand(logp.shape[0], -1)[..., None]).squeeze(-1)  # (L, N)
    return -(torch.logsumexp(picked, dim=0) - math.log(logp.shape[0])).mean()


def run_weights(token_p: torch.Tensor, data: RoutingData, stack: CalibrationStack | None = None) -> torch.Tensor:
    """Run-level weights (prompts, K): each prompt's mean over its tokens and the layers of token
    weights (L, N, K), pooled by the stack's run-level part when given."""
    mean, _ = prompt_mean(token_p.mean(0), data.example)
    return stack.pool(mean) if stack is not None else mean


def prompt_nll(run_p: torch.Tensor, data: RoutingData) -> torch.Tensor:
    return -run_p.gather(-1, prompt_labels(data)[:, None]).clamp_min(1e-12).log().mean()


def nll(logp: torch.Tensor, data: RoutingData) -> float:
    """Token NLL (`token_nll`) of log-probabilities (L, N, K), as a number for reports."""
    return float(token_nll(logp, data))


T_RANGE = (0.05, 20.0)
"""Temperatures are searched within this range: on the layer-mean objective a layer that only adds
noise is best muted (T → ∞), and an unbounded search would overflow."""


def fit_temperature(data: RoutingData) -> TemperatureScaling:
    """One temperature per layer, fitted together by L-BFGS on the token NLL (of the layer-mean weights)."""
    log_t = torch.zeros(data.logits.shape[0], requires_grad=True)
    low, high = math.log(T_RANGE[0]), math.log(T_RANGE[1])
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = token_nll(F.log_softmax(data.logits / log_t.clamp(low, high).exp()[:, None, None], dim=-1), data)
        loss.backward()
        return loss

    opt.step(closure)
    fitted = log_t.detach().clamp(low, high).exp()
    return TemperatureScaling(torch.where(torch.isfinite(fitted), fitted, torch.ones_like(fitted)))


def _grid_search(score, grid: tuple[list[float], ...], identity: tuple[float, ...]) -> tuple[tuple[float, ...], dict[str, Any]]:
    """The grid point with the lowest score over all the select sets among those within `IN_DISTRIBUTION_SLACK` of
    `identity` (the part switched off) on the in-distribution select part alone, at token and at prompt level — a
    part may help under shift, not at the price of in-distribution calibration — and a note of where it sits."""
    table = {point: score(point) for point in itertools.product(*grid)}  # (in-dist token, in-dist prompt, all sets)
    bounds = [v * (1 + IN_DISTRIBUTION_SLACK) for v in table[identity][:2]]
    best = min((p for p, s in table.items() if s[0] <= bounds[0] and s[1] <= bounds[1]), key=lambda p: table[p][2])
    at_edge = [bool(v == axis[-1] and len(axis) > 1) for v, axis in zip(best, grid)]
    return best, {"best": list(best), "at_upper_edge": at_edge, "scores": [round(v, 4) for v in table[best]],
                  "identity_scores": [round(v, 4) for v in table[identity]]}


def _pca(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    mean = x.mean(0)
    _, _, v = torch.linalg.svd(x - mean, full_matrices=False)
    return mean, v[: min(dim, v.shape[0])]


def fit_natural(fit: RoutingData, selects: Selects, stack: CalibrationStack, cfg: CalibrationConfig
                ) -> tuple[NaturalGeometry, dict[str, Any]]:
    """Gaussians on the fit part; (λ1, λ2) chosen on the select sets."""
    n_layers, k = fit.logits.shape[0], fit.logits.shape[-1]
    means, comps, class_means, precisions, priors = [], [], [], [], []
    for layer in range(n_layers):
        mean, comp = _pca(fit.features[layer], cfg.pca_dim)
        u = project(fit.features[layer], mean, comp)
        mus = torch.stack([u[fit.labels == c].mean(0) if (fit.labels == c).any() else u.mean(0) for c in range(k)])
        centered = u - mus[fit.labels]
        cov = centered.T @ centered / max(len(u) - k, 1) + cfg.ridge * torch.eye(u.shape[1])
        means.append(mean), comps.append(comp), class_means.append(mus)
        precisions.append(torch.linalg.inv(cov)), priors.append(torch.full((k,), 1.0 / k).log())  # axes equally likely
    part = NaturalGeometry(torch.stack(means), torch.stack(comps), torch.stack(class_means), torch.stack(precisions), torch.stack(priors))
    bases = [token_logp(stack, select) for select in selects]
    geos = [torch.stack([part.log_posterior(l, select.features[l]) for l in range(n_layers)]) for select in selects]

    def score(values: tuple[float, ...]) -> tuple[float, float]:
        return scores([F.log_softmax(values[0] * b + values[1] * g, dim=-1) for b, g in zip(bases, geos)], selects)

    (part.lambda1, part.lambda2), note = _grid_search(score, LAMBDA_GRID, identity=(1.0, 0.0))
    return part, note


def fit_fractal(fit: RoutingData, selects: Selects, stack: CalibrationStack, natural: NaturalGeometry,
                cfg: CalibrationConfig) -> tuple[FractalGeometry, dict[str, Any]]:
    """A bank of fit-part tokens; (β, β_d) chosen on the select sets (other prompts than the bank's)."""
    n_layers = fit.logits.shape[0]
    gen = torch.Generator().manual_seed(cfg.seed)
    in_bank = torch.randperm(fit.labels.shape[0], generator=gen)[: cfg.bank_size]
    k = min(cfg.knn, len(in_bank) - 1)
    banks, lid_med, dist_med = [], [], []
    for layer in range(n_layers):
        bank = project(fit.features[layer, in_bank], natural.mean[layer], natural.components[layer])
        own = knn_distances(bank, bank, k, exclude_self=True)
        banks.append(bank)
        lid_med.append(levina_bickel_lid(own).median())
        dist_med.append(own[:, -1].median().clamp_min(1e-6))
    part = FractalGeometry(natural.mean, natural.components, torch.stack(banks), torch.stack(lid_med), torch.stack(dist_med), k=k)

    def excess(select: RoutingData) -> tuple[torch.Tensor, torch.Tensor]:
        """(LID, k-th distance) of the set's tokens over the bank's medians, minus 1, floored at 0: (L, N) each."""
        lids, dists = [], []
        for layer in range(n_layers):
            query = knn_distances(project(select.features[layer], natural.mean[layer], natural.components[layer]), banks[layer], k)
            lids.append(levina_bickel_lid(query) / lid_med[layer]), dists.append(query[:, -1] / dist_med[layer])
        return (torch.stack(lids) - 1).clamp_min(0), (torch.stack(dists) - 1).clamp_min(0)

    bases, excesses = [token_logp(stack, select) for select in selects], [excess(select) for select in selects]

    def score(values: tuple[float, ...]) -> tuple[float, float]:
        taus = [1.0 + values[0] * lid + values[1] * dist for lid, dist in excesses]
        return scores([F.log_softmax(b / t[..., None], dim=-1) for b, t in zip(bases, taus)], selects)

    (part.beta, part.beta_dist), note = _grid_search(score, BETA_GRID, identity=(0.0, 0.0))
    return part, note


def pooled_temperature(means: list[torch.Tensor], selects: Selects) -> float:
    """T_pool minimising the mean over the sets of the prompt-level NLL of run-level means (golden-section
    search on log T in [−3, 3])."""
    logs = [mean.clamp_min(1e-12).log() for mean in means]  # PooledTemperature.pool, the log taken once

    def loss(log_t: float) -> float:
        t = math.exp(log_t)
        return sum(float(prompt_nll(F.softmax(lg / t, dim=-1), s)) for lg, s in zip(logs, selects)) / len(selects)

    lo, hi, ratio = -3.0, 3.0, (5 ** 0.5 - 1) / 2
    for _ in range(60):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        lo, hi = (lo, b) if loss(a) < loss(b) else (a, hi)
    return float(torch.tensor((lo + hi) / 2).exp())


def selection_score(logps: list[torch.Tensor], selects: Selects) -> float:
    """Token NLL + prompt-level NLL after the best pooled temperature for all the sets together, averaged over
    the select sets (one log-probability tensor each; see the module docstring)."""
    means = [run_weights(logp.exp(), select) for logp, select in zip(logps, selects)]
    pooled = PooledTemperature(torch.tensor(pooled_temperature(means, selects)))
    return sum(float(token_nll(logp, select)) + float(prompt_nll(pooled.pool(mean), select))
               for logp, mean, select in zip(logps, means, selects)) / len(selects)


def scores(logps: list[torch.Tensor], selects: Selects) -> tuple[float, float, float]:
    """(the in-distribution select part's token NLL and its prompt NLL after its own best pooled temperature,
    the selection score of all the sets): the first two bound a grid search, the last ranks what the bounds
    admit (`_grid_search`)."""
    select, logp = selects[0], logps[0]
    mean = run_weights(logp.exp(), select)
    prompt = float(prompt_nll(PooledTemperature(torch.tensor(pooled_temperature([mean], [select]))).pool(mean), select))
    token = float(token_nll(logp, select))
    return token, prompt, (token + prompt if len(selects) == 1 else selection_score(logps, selects))


def fit_pooled(selects: Selects, stack: CalibrationStack) -> PooledTemperature:
    """T_pool minimising the select sets' prompt-level NLL of the stack's token weights."""
    means = [run_weights(token_logp(stack, select).exp(), select) for select in selects]
    return PooledTemperature(torch.tensor(pooled_temperature(means, selects)))


def set_report(stack: CalibrationStack, data: RoutingData) -> dict[str, Any]:
    """One set's token NLL, prompt NLL and prompt accuracy, uncalibrated and under the stack."""
    raw, calibrated = token_logp(None, data).exp(), token_logp(stack, data).exp()
    labels = prompt_labels(data)
    return {
        "token_nll": {"uncalibrated": nll(raw.log(), data), "calibrated": nll(calibrated.log(), data)},
        "prompt_nll": {"uncalibrated": float(prompt_nll(run_weights(raw, data), data)),
                       "token_parts_unpooled": float(prompt_nll(run_weights(calibrated, data), data)),
                       "pooled": float(prompt_nll(run_weights(calibrated, data, stack), data))},
        "prompt_accuracy": {name: float((run_weights(p, data).argmax(-1) == labels).float().mean())
                            for name, p in (("uncalibrated", raw), ("calibrated", calibrated))},
    }


def fit_calibration(data: RoutingData, cfg: CalibrationConfig, shift: RoutingData | None = None
                    ) -> tuple[CalibrationStack, dict[str, Any]]:
    """Fit all parts in order on the calibration data's fit part, choosing every setting on its select
    part and `shift` (when given and not empty); return the stack and a report: the select part's token
    NLL after each token-level part, its prompt NLL and accuracy, and the shift set's (`set_report`)."""
    fit, select = data.split_by_prompt(1 - cfg.select_fraction, seed=cfg.seed)
    selects = [select] + ([shift] if shift is not None and shift.labels.numel() else [])
    report: dict[str, Any] = {"fit_tokens": int(fit.labels.numel()), "select_tokens": int(select.labels.numel()),
                              "shift_tokens": int(selects[1].labels.numel()) if len(selects) > 1 else 0,
                              "select_token_nll": {"uncalibrated": nll(token_logp(None, select), select)}}
    stack = CalibrationStack(fit_temperature(fit))
    report["select_token_nll"]["temperature"] = nll(token_logp(stack, select), select)
    natural, report["lambda_search"] = fit_natural(fit, selects, stack, cfg)
    stack = CalibrationStack(stack.temperature, [natural])
    report["select_token_nll"]["natural"] = nll(token_logp(stack, select), select)
    fractal, report["beta_search"] = fit_fractal(fit, selects, stack, natural, cfg)
    stack = CalibrationStack(stack.temperature, [natural, fractal])
    report["select_token_nll"]["fractal"] = nll(token_logp(stack, select), select)
    stack = CalibrationStack(stack.temperature, [natural, fractal], fit_pooled(selects, stack))
    measured = set_report(stack, select)
    report["select_prompt_nll"], report["select_prompt_accuracy"] = measured["prompt_nll"], measured["prompt_accuracy"]
    if len(selects) > 1:
        report["shift"] = set_report(stack, selects[1])
    return stack, report


def calibrate(out: str | Path, examples: list[AxisExample], cfg: CalibrationConfig, *, load_in_4bit: bool = False,
              shift: list[AxisExample] = ()) -> dict[str, Any]:
    """Fit the calibration of the checkpoint in `out` on its calibration split (settings chosen also on
    the `shift` prompts) and save it, marked as fitted for the routers beside it (`modeling.provenance`),
    with logs/calibration_summary.json — both only once the fit has finished (`pipeline.staged`).
    Routers that were never trained are refused."""
    from alignx_demo.training.pipeline import staged

    out = Path(out)
    loaded = load_mocae(out, load_in_4bit=load_in_4bit)
    routers = fingerprint(load_file(str(out / ROUTER_FILE)))
    cal = [e for axis in loaded.mocae.axes for e in eval_prompts(examples, axis, cfg.max_per_axis, split="calibration", mixed=True)]
    data = collect_routing(loaded.mocae, loaded.tokenizer, cal, max_len=cfg.max_len)
    shifted = collect_routing(loaded.mocae, loaded.tokenizer, list(shift), max_len=cfg.max_len) if shift else None
    stack, report = fit_calibration(data, cfg, shifted)
    summary = {
        "config": asdict(cfg),
        "prompts": len(cal),
        "shift_prompts": {source: sum(e.source == source for e in shift) for source in sorted({e.source for e in shift})},
        "report": report,
        "temperatures": stack.temperature.temperatures.tolist(),
        "natural": stack.parts[0].settings(),
        "fractal": stack.parts[1].settings(),
        "pooled_temperature": float(stack.pooled.T),
    }
    with staged(out, "calibrate") as tmp:
        save_marked(stack, tmp / CALIBRATION_FILE, trained_metadata("calibrate", router=routers, prompts=len(cal)))
        (tmp / "logs").mkdir()
        (tmp / "logs" / "calibration_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def save_marked(stack: CalibrationStack, path: Path, marker: dict[str, str]) -> None:
    """`stack.save(path)`, with the training marker added to the file's metadata."""
    from safetensors import safe_open

    stack.save(path)
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata() or {}
    save_file(load_file(str(path)), str(path), metadata={**metadata, **marker})
