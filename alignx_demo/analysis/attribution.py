"""Counterfactual expert attribution: what each expert did for each generated token.

For a trace (a prompt and its generated tokens) seven variants of the same token sequence run as one
batch in ONE forward, each batch row with its own routing override applied to every layer's weights
after the model's own routing (calibration, prior, top-1):

    row 0      actual   — the routing as it is;
    rows 1–3   remove k — expert k's weight set to 0 and the remaining two renormalised to sum 1,
                          at every token and layer (all-zero when nothing remains: the base alone);
    rows 4–6   force k  — one-hot on expert k (exactly the PEFT adapter k alone on the base).

The routers still run in every row on that row's own hidden states, so "remove k" is the model
without expert k throughout the sequence, teacher-forced on the trace's tokens. For a generated
token at position i (drawn from the logits at i − 1): `logprob` = log p(token | actual routing), and
per expert `remove[k]` = logprob(remove k) − logprob and `force[k]` = logprob(force k) − logprob.
The **effect** of expert k is −remove[k]: how much the expert raised the chosen token's
log-probability. Each token also carries its routing weights (mean over layers, of the forward that
produced it, as in the trace convention); per run: how often the top-weight expert is also the
top-effect expert, over the tokens on which some expert's removal matters (`EFFECT_FLOOR`).

The override is the model's public routing transform (`MoCaEModel.transformed`), which holds the
model's lock and leaves the recorded weights the model's own.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import fields
from typing import Any

import torch
from torch.nn import functional as F

from alignx_demo.analysis.common import layer_mean_weights, routing_description, unwrap
from alignx_demo.analysis.traces import validate_trace
from alignx_demo.config import AXES, RoutingSettings
from alignx_demo.generation import IncrementalDecoder, context_length, input_device

ATTRIBUTION_SCHEMA = "alignx-attribution/1"
EFFECT_FLOOR = 1e-3
"""Nats: a token on which no expert's removal moves the log-probability this much has no top-effect
expert (None) and is left out of the agreement rate (argmax over noise would count as a verdict)."""
K = len(AXES)
VARIANTS: tuple[tuple[str, int | None], ...] = (
    ("actual", None), *(("remove", k) for k in range(K)), *(("force", k) for k in range(K)))
"""The batch rows of one attribution forward, in order."""
DEFINITIONS = {
    "logprob": "log-probability of the generated token under the actual routing, teacher-forced",
    "remove": "log-prob with the expert's weight set to 0 at every token and layer (others renormalised) minus logprob",
    "force": "log-prob with only that expert (one-hot weights everywhere) minus logprob",
    "effect": "−remove: how much the expert raised the token's log-probability",
    "weights": "routing weights the token carries (mean over layers; the forward that produced it)",
}


def variant_weights(weights: torch.Tensor, variants: tuple[tuple[str, int | None], ...] = VARIANTS) -> torch.Tensor:
    """Apply one variant per batch row to weights (B, T, K): actual, remove k (renormalised), force k."""
    if weights.shape[0] != len(variants):
        raise ValueError(f"{len(variants)} variants need a batch of {len(variants)} rows, got {weights.shape[0]}")
    keep = torch.ones(len(variants), K, dtype=weights.dtype, device=weights.device)
    forced = torch.zeros(len(variants), dtype=torch.bool, device=weights.device)
    onehot = torch.zeros(len(variants), K, dtype=weights.dtype, device=weights.device)
    for row, (kind, k) in enumerate(variants):
        if kind == "remove":
            keep[row, k] = 0.0
        elif kind == "force":
            forced[row] = True
            onehot[row, k] = 1.0
    kept = weights * keep[:, None, :]
    total = kept.sum(-1, keepdim=True)
    renormed = torch.where(total > 0, kept / total.clamp_min(torch.finfo(kept.dtype).tiny), torch.zeros_like(kept))
    return torch.where(forced[:, None, None], onehot[:, None, :].expand_as(weights), renormed)


def _sequence(trace_or_ids: Any, prompt_length: int | None) -> tuple[list[int], int, dict[str, Any] | None]:
    """(token ids, number of prompt tokens, the trace or None)."""
    if isinstance(trace_or_ids, dict):
        trace = validate_trace(trace_or_ids)
        ids = [t["id"] for t in trace["tokens"]]
        return ids, sum(t["is_prompt"] for t in trace["tokens"]), trace
    ids = [int(i) for i in (trace_or_ids.tolist() if isinstance(trace_or_ids, torch.Tensor) else trace_or_ids)]
    if prompt_length is None:
        raise ValueError("token ids need prompt_length: how many of them are the prompt")
    return ids, int(prompt_length), None


def _trace_routing(trace: dict[str, Any]) -> RoutingSettings:
    known = {f.name for f in fields(RoutingSettings)}
    try:
        return RoutingSettings(**{k: v for k, v in trace["settings"]["routing"].items() if k in known})
    except (TypeError, ValueError) as err:
        raise ValueError(f"the trace's routing settings cannot be used: {err}") from None


def _logits_kwargs(model: Any, keep: int) -> dict[str, int]:
    """Ask only for the logits of the last `keep` positions when the model supports it."""
    return {"logits_to_keep": keep} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def _axes_dict(values: torch.Tensor) -> dict[str, float]:
    return {a: float(values[k]) for k, a in enumerate(AXES)}


@torch.no_grad()
def _variant_forward(mocae: Any, ids: list[int], n_prompt: int, routing: RoutingSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward of the seven variants: (log-prob of each generated token per variant (V, G), the actual
    routing's layer-mean weights of each generated token (G, K), as recorded: the model's own routing)."""
    n_gen = len(ids) - n_prompt
    batch = torch.tensor([ids] * len(VARIANTS), device=input_device(mocae.model))
    with mocae.transformed(lambda _layer, w: variant_weights(w)), mocae.routed(routing), mocae.record() as record:
        out = mocae(input_ids=batch, **_logits_kwargs(mocae.model, n_gen + 1))
    logits = out.logits[:, -(n_gen + 1) : -1].float()  # (V, G, vocab): the logits at positions P−1 … T−2
    targets = torch.tensor(ids[n_prompt:], device=logits.device)
    logp = F.log_softmax(logits, dim=-1).gather(-1, targets.view(1, -1, 1).expand(len(VARIANTS), -1, 1))[..., 0].cpu()
    weights = layer_mean_weights(record)[0, n_prompt - 1 : len(ids) - 1]  # row 0 is the actual run
    return logp, weights


def _token_rows(ids: list[int], n_prompt: int, texts: list[str], logp: torch.Tensor, weights: torch.Tensor,
                remove: torch.Tensor, force: torch.Tensor) -> list[dict[str, Any]]:
    """One row per generated token: its weights, log-prob, the effect of removing or forcing each expert,
    and whether the top-weight expert is the top-effect one."""
    tokens = []
    for j in range(len(ids) - n_prompt):
        effect = -remove[:, j]
        top_w = AXES[int(weights[j].argmax())]
        top_e = AXES[int(effect.argmax())] if float(effect.abs().max()) >= EFFECT_FLOOR else None
        tokens.append({"index": j, "position": n_prompt + j, "id": ids[n_prompt + j], "text": texts[j],
                       "weights": _axes_dict(weights[j]), "logprob": float(logp[0, j]), "remove": _axes_dict(remove[:, j]),
                       "force": _axes_dict(force[:, j]), "effect": _axes_dict(effect), "top_weight": top_w,
                       "top_effect": top_e, "agree": None if top_e is None else top_w == top_e})
    return tokens


def _run_summary(tokens: list[dict[str, Any]], remove: torch.Tensor, force: torch.Tensor) -> dict[str, Any]:
    """Per run: mean effects and forcings, top-effect counts, and how often top weight is top effect."""
    decided = [t for t in tokens if t["agree"] is not None]
    return {
        "tokens": len(tokens),
        "tokens_with_effect": len(decided),
        "top_weight_is_top_effect": sum(t["agree"] for t in decided) / len(decided) if decided else None,
        "mean_effect": _axes_dict(-remove.mean(1)),
        "mean_force": _axes_dict(force.mean(1)),
        "top_effect_counts": {a: sum(t["top_effect"] == a for t in tokens) for a in AXES},  # None not counted
    }


def _check_length(mocae: Any, ids: list[int], n_prompt: int) -> None:
    """At least one prompt and one generated token, within the model's context."""
    n_gen = len(ids) - n_prompt
    if n_prompt < 1 or n_gen < 1:
        raise ValueError(f"nothing to attribute: {n_prompt} prompt and {n_gen} generated tokens (need at least one of each)")
    if len(ids) > context_length(mocae.model):
        raise ValueError(f"the trace has {len(ids)} tokens, more than the model's context of {context_length(mocae.model)}")


def attribute(
    loaded_or_mocae: Any, tokenizer: Any, trace_or_ids: Any, *, prompt_length: int | None = None,
    routing: RoutingSettings | None = None,
) -> dict[str, Any]:
    """Counterfactual attribution of every generated token of a trace (see the module docstring).

    `trace_or_ids`: a trace dict (validated; its routing settings are used unless `routing` is given)
    or token ids with `prompt_length`. Returns plain JSON-able data:

        {"schema": "alignx-attribution/1", "model", "axes", "routing": {…, "calibration"}, "prompt",
         "definitions": {…}, "variants": ["actual", "remove helpful", …, "force honest"], "forwards": 1,
         "batch": 7, "seconds",
         "tokens": [{"index", "position", "id", "text", "weights": {axis: w}, "logprob",
                     "remove": {axis: Δ}, "force": {axis: Δ}, "effect": {axis: −remove},
                     "top_weight", "top_effect": axis | None, "agree": bool | None}],
         "summary": {"tokens", "tokens_with_effect", "top_weight_is_top_effect": rate | None,
                     "mean_effect": {axis}, "mean_force": {axis},
                     "top_effect_counts": {axis: n}},
         "trace_weights_max_abs_diff": float | None}   # recomputed vs the trace's stored weights
    """
    mocae, tokenizer, name = unwrap(loaded_or_mocae, tokenizer)
    ids, n_prompt, trace = _sequence(trace_or_ids, prompt_length)
    if routing is None:
        routing = _trace_routing(trace) if trace is not None else RoutingSettings()
    _check_length(mocae, ids, n_prompt)
    started = time.monotonic()
    logp, weights = _variant_forward(mocae, ids, n_prompt, routing)
    texts = [t["text"] for t in trace["tokens"][n_prompt:]] if trace is not None else _texts(tokenizer, ids, n_prompt)
    delta = (logp[1:] - logp[:1]).double()  # (6, G): each variant's log-prob minus the actual one
    remove, force = delta[:K], delta[K:]
    tokens = _token_rows(ids, n_prompt, texts, logp, weights, remove, force)
    stored = None
    if trace is not None:
        stored_w = torch.tensor([[t["weights"][a] for a in AXES] for t in trace["tokens"][n_prompt:]])
        stored = float((stored_w - weights).abs().max())
    return {
        "schema": ATTRIBUTION_SCHEMA, "model": name or (trace or {}).get("model", ""), "axes": list(AXES),
        "routing": routing_description(mocae, routing), "prompt": trace["prompt"] if trace is not None else None,
        "definitions": dict(DEFINITIONS), "variants": [kind if k is None else f"{kind} {AXES[k]}" for kind, k in VARIANTS],
        "forwards": 1, "batch": len(VARIANTS), "seconds": round(time.monotonic() - started, 4), "tokens": tokens,
        "summary": _run_summary(tokens, remove, force), "trace_weights_max_abs_diff": stored,
    }


def _texts(tokenizer: Any, ids: list[int], n_prompt: int) -> list[str]:
    decoder = IncrementalDecoder(tokenizer, skip_special_tokens=False)
    for i in ids[:n_prompt]:
        decoder.push(i)
    return [decoder.push(i) for i in ids[n_prompt:]]
