"""Counterfactual expert attribution: what each expert did for each generated token.

A trace (a prompt and its generated tokens) is teacher-forced under routing overrides applied to the
weights after the model's own routing (calibration, prior, top-1), in two scopes, each one batched forward
(the local one on request: its rows are prefixes, so it costs far more); K is the model's number of axes (3 for
the HHH bundle):

    scope "run"    2K + 1 rows: actual; remove k (expert k's weight 0, the others renormalised to sum 1; all-zero,
                   the base alone, when nothing remains); force k (one-hot: the PEFT adapter k alone on the base)
                   — at EVERY position and layer, prompt included: the model without (or with only) expert k.
    scope "local"  2K rows per generated token: remove k / force k at the ONE position whose forward produced
                   the token (position − 1, whose weights the token carries), every layer; every other
                   position routes as in the actual run. Rows are left-padded prefixes (padding masked), so
                   the changed position is each row's last and only its logits are kept.

and, on request (`layers=True`), a third forward of K × L rows: remove k at layer l only, at every position
(scope "run"). The routers still run in every row on that row's own hidden states. For a generated token
at position i (drawn from the logits at i − 1): `logprob` = log p(token | actual routing); per expert
`remove[k]` = logprob(remove k) − logprob, `force[k]` = logprob(force k) − logprob, and the **effect**
−remove[k]: how much expert k raised the token's log-probability. The top-effect expert is the one with the
largest effect, but only when that effect is at least `EFFECT_FLOOR`: otherwise no expert helps the token
(`outcome`), and the token is not counted as an agreement or a disagreement with the top-weight expert.

The overrides go through the model's public routing transform (`MoCaEModel.transformed`), which holds the
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
"""Nats: an expert whose effect on a token is below this does not help it. A token no expert helps has no
top-effect expert (None) and is left out of the agreement rate (an argmax over noise, or over effects that
are all negative, would count as a verdict)."""
Variants = tuple[tuple[str, int | None], ...]


def run_variants(k: int) -> Variants:
    """The batch rows of the run-scope forward of a model with k experts, in order: actual, remove each, force each."""
    return (("actual", None), *(("remove", j) for j in range(k)), *(("force", j) for j in range(k)))


VARIANTS = run_variants(len(AXES))
"""The run-scope rows of an HHH model (7)."""
LOCAL_VARIANTS = VARIANTS[1:]
"""The rows of the local forward for each generated token of an HHH model, in order (its actual log-prob is the
run's): `run_variants(k)[1:]` for k experts."""
OUTCOMES = ("expert_helps", "no_expert_helps", "no_effect")
"""Per token and scope: some expert's effect ≥ EFFECT_FLOOR (top_effect names the largest); some removal
moves the log-prob by ≥ EFFECT_FLOOR but none lowers it that much (every expert only hurts or barely
matters); no removal moves it by EFFECT_FLOOR."""
SCOPES = {
    "run": "the variant applied at every position (prompt included) and every layer",
    "local": "the variant applied only at the position whose forward produced the token (position − 1), "
             "every layer; every other position's routing unchanged",
}
DEFINITIONS = {
    "logprob": "log-probability of the generated token under the actual routing, teacher-forced",
    "remove": "log-prob with the expert's weight set to 0 (the others renormalised to sum 1) minus logprob",
    "force": "log-prob with only that expert (one-hot weights) minus logprob",
    "effect": "−remove: how much the expert raised the token's log-probability",
    "top_effect": f"the expert with the largest effect if that effect is ≥ {EFFECT_FLOOR:g} nats, else None",
    "outcome": "expert_helps | no_expert_helps (removals matter, but none lowers the log-prob by the floor) "
               "| no_effect (no removal moves it by the floor)",
    "agree": "top_weight == top_effect; None when no expert helps (not counted either way)",
    "weights": "routing weights the token carries (mean over layers; the forward that produced it)",
    "scope": "where the variant applies (see scopes): the token's own fields are scope run, its 'local' ones local",
    "layer_effect": "scope run, on request: −(log-prob with the expert's weight 0 at that one layer, every "
                    "position, minus logprob), one value per layer",
}


def variant_weights(weights: torch.Tensor, variants: Variants = VARIANTS) -> torch.Tensor:
    """Apply one variant per batch row to weights (B, T, K): actual, remove k (renormalised), force k."""
    if weights.shape[0] != len(variants):
        raise ValueError(f"{len(variants)} variants need a batch of {len(variants)} rows, got {weights.shape[0]}")
    K = weights.shape[-1]  # the module docstring's K
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


def top_effect(effect: torch.Tensor, axes: tuple[str, ...] = AXES) -> tuple[str | None, str]:
    """(top-effect axis or None, outcome) for one token's effects (K,) over `axes`: an argmax only where it helps."""
    best = int(effect.argmax())
    if float(effect[best]) >= EFFECT_FLOOR:
        return axes[best], "expert_helps"
    return None, "no_expert_helps" if float(effect.abs().max()) >= EFFECT_FLOOR else "no_effect"


def scope_effects(scope: str, remove: torch.Tensor, force: torch.Tensor, top_weights: list[str],
                  axes: tuple[str, ...] = AXES) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per token and for the run, one scope's numbers from its log-prob changes remove and force (K, G) over `axes`:
    (per-token {remove, force, effect, top_effect, outcome, agree}, summary). Only tokens some expert helps
    count towards the agreement rate and the top-effect counts."""
    rows = []
    for j, top_w in enumerate(top_weights):
        effect = -remove[:, j]
        top_e, outcome = top_effect(effect, axes)
        rows.append({"remove": _axes_dict(remove[:, j], axes), "force": _axes_dict(force[:, j], axes),
                     "effect": _axes_dict(effect, axes),
                     "top_effect": top_e, "outcome": outcome, "agree": None if top_e is None else top_w == top_e})
    helped = [r for r in rows if r["top_effect"] is not None]
    summary = {
        "scope": scope, "tokens": len(rows), **{f"tokens_{o}": sum(r["outcome"] == o for r in rows) for o in OUTCOMES},
        "top_weight_is_top_effect": sum(r["agree"] for r in helped) / len(helped) if helped else None,
        "mean_effect": _axes_dict(-remove.mean(1), axes), "mean_force": _axes_dict(force.mean(1), axes),
        "top_effect_counts": {a: sum(r["top_effect"] == a for r in helped) for a in axes},
    }
    return rows, summary


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


def _axes_dict(values: torch.Tensor, axes: tuple[str, ...]) -> dict[str, float]:
    return {a: float(values[k]) for k, a in enumerate(axes)}


def _token_logp(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) under logits (..., vocab), on the CPU in fp32."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, targets.to(logp.device).expand(logp.shape[:-1]).unsqueeze(-1))[..., 0].cpu()


@torch.no_grad()
def _run_forward(mocae: Any, ids: list[int], n_prompt: int, routing: RoutingSettings,
                 variants: list[Variants]) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward of whole sequences, one variant per row applied at every position of layer l as
    variants[l] says: (log-prob of each generated token per row (V, G), the first row's layer-mean weights
    of each generated token (G, K), as recorded: the model's own routing)."""
    n_gen = len(ids) - n_prompt
    batch = torch.tensor([ids] * len(variants[0]), device=input_device(mocae.model))
    span = torch.zeros_like(batch)
    span[:, :n_prompt] = 1  # with context_scope "prompt", the answer reads the prompt's summary, as when streamed
    with mocae.transformed(lambda layer, w: variant_weights(w, variants[layer])), mocae.routed(routing), \
            mocae.prompt_span(span), mocae.record() as recorded:
        out = mocae(input_ids=batch, **_logits_kwargs(mocae.model, n_gen + 1))
    logp = _token_logp(out.logits[:, -(n_gen + 1) : -1], torch.tensor(ids[n_prompt:]))  # logits at P−1 … T−2
    return logp, layer_mean_weights(recorded)[0, n_prompt - 1 : len(ids) - 1]


@torch.no_grad()
def _local_forward(mocae: Any, ids: list[int], n_prompt: int, routing: RoutingSettings) -> torch.Tensor:
    """Log-prob of each generated token under each local variant (2K, G), from one forward:
    per token the prefix that produced it, left-padded to a common width (masked, positions from the mask,
    as analysis batches prompts), the variant applied at its last position only."""
    n_gen, width = len(ids) - n_prompt, len(ids) - 1
    prefixes = torch.zeros(n_gen, width, dtype=torch.long)
    mask = torch.zeros(n_gen, width, dtype=torch.long)
    span = torch.zeros(n_gen, width, dtype=torch.long)
    for j in range(n_gen):
        length = n_prompt + j
        prefixes[j, width - length :] = torch.tensor(ids[:length])
        mask[j, width - length :] = 1
        span[j, width - length : width - length + n_prompt] = 1
    local_variants = run_variants(mocae.config.n_experts)[1:]
    per_token = len(local_variants)
    device = input_device(mocae.model)
    batch = prefixes.repeat_interleave(per_token, 0).to(device)
    mask = mask.repeat_interleave(per_token, 0).to(device)
    span = span.repeat_interleave(per_token, 0).to(device)
    variants = local_variants * n_gen

    def at_last_position(_layer: int, w: torch.Tensor) -> torch.Tensor:
        return torch.cat([w[:, :-1], variant_weights(w[:, -1:], variants)], dim=1)

    with mocae.transformed(at_last_position), mocae.routed(routing), mocae.prompt_span(span):
        out = mocae(input_ids=batch, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0),
                    **_logits_kwargs(mocae.model, 1))
    targets = torch.tensor(ids[n_prompt:]).repeat_interleave(per_token)
    return _token_logp(out.logits[:, -1], targets).view(n_gen, per_token).T


def _layer_variants(n_layers: int, k: int) -> list[Variants]:
    """Per layer, the rows (l, j) of the per-layer forward: remove j where l is this layer, else actual."""
    return [tuple(("remove", j) if row_layer == layer else ("actual", None)
                  for row_layer in range(n_layers) for j in range(k)) for layer in range(n_layers)]


def _check_length(mocae: Any, ids: list[int], n_prompt: int) -> None:
    """At least one prompt and one generated token, within the model's context."""
    n_gen = len(ids) - n_prompt
    if n_prompt < 1 or n_gen < 1:
        raise ValueError(f"nothing to attribute: {n_prompt} prompt and {n_gen} generated tokens "
                         "(need at least one of each)")
    if len(ids) > context_length(mocae.model):
        raise ValueError(f"the trace has {len(ids)} tokens, more than the model's context of "
                         f"{context_length(mocae.model)}")


def attribute(
    loaded_or_mocae: Any, tokenizer: Any, trace_or_ids: Any, *, prompt_length: int | None = None,
    routing: RoutingSettings | None = None, local: bool = False, layers: bool = False,
) -> dict[str, Any]:
    """Counterfactual attribution of every generated token of a trace (see the module docstring).

    `trace_or_ids`: a trace dict (validated, of a model with this model's axes; its routing settings are used
    unless `routing` is given)
    or token ids with `prompt_length`. `local`: also the local scope (one forward of 2K rows per generated
    token, each a prefix: its cost grows with the square of the length, about 50 times the run scope's at 64
    tokens). `layers`: also the per-layer effects (one more forward of K × L rows).
    Returns plain JSON-able data:

        {"schema": "alignx-attribution/1", "model", "axes", "routing": {…, "calibration"}, "prompt",
         "definitions": {…}, "scopes": {"run": …, "local": …}, "variants": ["actual", "remove helpful", …],
         "forwards": 1 to 3, "batch": {"run": 2K+1[, "local": 2K·G][, "layers": K·L]}, "seconds",
         "tokens": [{"index", "position", "id", "text", "weights": {axis: w}, "logprob", "top_weight",
                     "scope": "run", "remove": {axis: Δ}, "force": {axis: Δ}, "effect": {axis: −remove},
                     "top_effect": axis | None, "outcome", "agree": bool | None,
                     ["local": {"scope": "local", the same six fields}],
                     ["layer_effect": {axis: [effect at layer 0, …]}]}],
         "summary": {"scope": "run", "tokens", "tokens_expert_helps", "tokens_no_expert_helps", "tokens_no_effect",
                     "top_weight_is_top_effect": rate | None, "mean_effect": {axis}, "mean_force": {axis},
                     "top_effect_counts": {axis: n}, ["local": {the same for scope local}],
                     ["layers": {"scope": "run", "mean_effect": {axis: [per layer]}}]},
         "trace_weights_max_abs_diff": float | None}   # recomputed vs the trace's stored weights
    """
    mocae, tokenizer, name = unwrap(loaded_or_mocae, tokenizer)
    ids, n_prompt, trace = _sequence(trace_or_ids, prompt_length)
    if routing is None:
        routing = _trace_routing(trace) if trace is not None else RoutingSettings()
    _check_length(mocae, ids, n_prompt)
    axes = mocae.axes
    if trace is not None and tuple(trace["axes"]) != axes:
        raise ValueError(f"the trace routes over {', '.join(trace['axes'])}, but the model's axes are {', '.join(axes)}")
    K, variants = len(axes), run_variants(len(axes))  # the module docstring's K
    started = time.monotonic()
    logp, weights = _run_forward(mocae, ids, n_prompt, routing, [variants] * mocae.n_layers)
    delta = (logp[1:] - logp[:1]).double()  # (2K, G): each variant's log-prob minus the actual one
    batch = {"run": len(variants)}
    if local:
        local_delta = (_local_forward(mocae, ids, n_prompt, routing) - logp[:1]).double()
        batch["local"] = 2 * K * (len(ids) - n_prompt)
    if layers:
        by_layer, _ = _run_forward(mocae, ids, n_prompt, routing, _layer_variants(mocae.n_layers, K))
        layer_effect = -(by_layer - logp[:1]).double().view(mocae.n_layers, K, -1)  # (L, K, G)
        batch["layers"] = mocae.n_layers * K
    texts = [t["text"] for t in trace["tokens"][n_prompt:]] if trace is not None else _texts(tokenizer, ids, n_prompt)
    top_weights = [axes[int(w.argmax())] for w in weights]
    run_rows, run_summary = scope_effects("run", delta[:K], delta[K:], top_weights, axes)
    local_rows, local_summary = (scope_effects("local", local_delta[:K], local_delta[K:], top_weights, axes) if local
                                 else ([None] * len(run_rows), None))
    tokens = []
    for j, (run_row, local_row) in enumerate(zip(run_rows, local_rows)):
        token = {"index": j, "position": n_prompt + j, "id": ids[n_prompt + j], "text": texts[j],
                 "weights": _axes_dict(weights[j], axes), "logprob": float(logp[0, j]), "top_weight": top_weights[j],
                 "scope": "run", **run_row}
        if local_row is not None:
            token["local"] = {"scope": "local", **local_row}
        if layers:
            token["layer_effect"] = {a: layer_effect[:, k, j].tolist() for k, a in enumerate(axes)}
        tokens.append(token)
    summary = {**run_summary, **({"local": local_summary} if local else {})}
    if layers:
        summary["layers"] = {"scope": "run", "mean_effect": {a: layer_effect[:, k].mean(-1).tolist()
                                                             for k, a in enumerate(axes)}}
    stored = None
    if trace is not None:
        stored_w = torch.tensor([[t["weights"][a] for a in axes] for t in trace["tokens"][n_prompt:]])
        stored = float((stored_w - weights).abs().max())
    return {
        "schema": ATTRIBUTION_SCHEMA, "model": name or (trace or {}).get("model", ""), "axes": list(axes),
        "routing": routing_description(mocae, routing), "prompt": trace["prompt"] if trace is not None else None,
        "definitions": dict(DEFINITIONS), "scopes": dict(SCOPES),
        "variants": [kind if k is None else f"{kind} {axes[k]}" for kind, k in variants],
        "forwards": len(batch), "batch": batch, "seconds": round(time.monotonic() - started, 4), "tokens": tokens,
        "summary": summary, "trace_weights_max_abs_diff": stored,
    }


def _texts(tokenizer: Any, ids: list[int], n_prompt: int) -> list[str]:
    decoder = IncrementalDecoder(tokenizer, skip_special_tokens=False)
    for i in ids[:n_prompt]:
        decoder.push(i)
    return [decoder.push(i) for i in ids[n_prompt:]]
