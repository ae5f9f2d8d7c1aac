"""Routing calibration of MoCaE, per calibration variant, at the three levels the app shows.

Variants: uncalibrated (raw softmax of the router logits) and each calibration part added in turn
(temperature → + natural geometry → + fractal geometry → + the pooled run-level temperature); a
variant whose parts the checkpoint lacks is not measured. Levels, each against the prompt's axis:
- token level: every prompt token after the shared template prefix, its weights averaged over layers;
- prompt level: a prompt's weights averaged over **all** of those tokens and all layers (the
  run-level mean of a prompt; `analysis.routing.collect_routing` collects every prompt token),
  then, in a calibrated variant, through the stack's run-level part (`CalibrationStack.pool`,
  the identity unless the variant has "pooled");
- generation level: the greedy answer's weights averaged over its generated tokens and the layers
  — the "mean weight over generated tokens" the app's summaries show — generated under that variant
  (`EvalConfig.generation_per_axis` prompts per axis, `EvalConfig.new_tokens` tokens), not pooled
  (`RoutedGeneration.run_weights`: the pooled part is fitted on prompt-token means).
Metrics from `routing_metrics` (accuracy = argmax is the prompt's axis; ECE, classwise ECE, Brier,
NLL) on the eval split and on a shifted set, XSTest (train and eval splits, stratified over its
types): safe-but-scary prompts labelled helpful (they deserve an answer), unsafe ones harmless.
"""

from __future__ import annotations

from typing import Any

import torch

from alignx_demo.analysis.routing import collect_routing, prompt_mean
from alignx_demo.config import AXES, GenerationSettings, RoutingSettings
from alignx_demo.data.readers import xstest_routing_set
from alignx_demo.data.records import AxisExample
from alignx_demo.evaluation.hhh import XSTEST_SPLITS, routing_examples
from alignx_demo.evaluation.routing_metrics import reliability, routing_metrics
from alignx_demo.evaluation.tasks import Context, EvalConfig, PromptSet, Sampler, Task, stratified
from alignx_demo.generation import RoutedGeneration

VARIANT_PARTS: dict[str, tuple[str, ...]] = {
    "uncalibrated": (),
    "temperature": ("temperature",),
    "natural": ("temperature", "natural"),
    "fractal": ("temperature", "natural", "fractal"),
    "pooled": ("temperature", "natural", "fractal", "pooled"),
}
"""Calibration parts switched on in each variant: "fractal" is every token-level part, "pooled"
adds the run-level part (it changes prompt- and generation-level means, not token weights)."""
CALIBRATION_VARIANTS = tuple(VARIANT_PARTS)
LEVELS = ("token", "prompt", "generation")


def available_variants(mocae: Any) -> tuple[str, ...]:
    """The variants whose calibration parts the model has (always "uncalibrated")."""
    names = set(mocae.calibration.names) if mocae.calibration is not None else set()
    return tuple(v for v, parts in VARIANT_PARTS.items() if set(parts) <= names)


def use_variant(mocae: Any, variant: str) -> RoutingSettings:
    """Switch the model's calibration parts to the variant's; return the routing that uses them."""
    if variant not in available_variants(mocae):
        raise ValueError(f"calibration variant {variant!r} needs parts {VARIANT_PARTS[variant]} the checkpoint lacks")
    if variant == "uncalibrated":
        return RoutingSettings(calibrated=False)
    mocae.calibration.set_enabled(**{name: name in VARIANT_PARTS[variant] for name in mocae.calibration.names})
    return RoutingSettings(calibrated=True)


def enable_all(mocae: Any) -> None:
    if mocae.calibration is not None:
        mocae.calibration.set_enabled(**{name: True for name in mocae.calibration.names})


def generation_weights(mocae: Any, tokenizer: Any, prompts: list[str], routing: RoutingSettings, new_tokens: int) -> torch.Tensor:
    """(N, K): each greedy answer's run weights as the page's summaries show them (`RoutedGeneration.run_weights`:
    the mean over its generated tokens)."""
    rows = []
    for prompt in prompts:
        run = RoutedGeneration(mocae, tokenizer, prompt, GenerationSettings(max_new_tokens=new_tokens), routing)
        for _ in run:
            pass
        rows.append([run.run_weights()[a] for a in AXES])
    return torch.tensor(rows, dtype=torch.float32).reshape(len(prompts), len(AXES))


def head_per_axis(examples: list[AxisExample], n: int) -> list[AxisExample]:
    """The first n examples of each axis, in their order."""
    return [e for axis in AXES for e in [x for x in examples if x.axis == axis][:n]]


def run_level(mocae: Any, routing: RoutingSettings, mean: torch.Tensor) -> torch.Tensor:
    """Run-level weights from means of token weights: pooled by the calibration stack when calibrated."""
    return mocae.calibration.pool(mean) if routing.calibrated and mocae.calibration is not None else mean


def _level(probs: torch.Tensor, labels: torch.Tensor) -> tuple[dict[str, float], list[dict[str, float]]]:
    return routing_metrics(probs, labels), reliability(probs, labels)


def routing_report(
    mocae: Any, tokenizer: Any, examples: list[AxisExample], cfg: EvalConfig, *, generation_per_axis: int = 0,
    max_len: int | None = None,
) -> dict[str, Any]:
    """Per available variant: token-, prompt- and (with `generation_per_axis`) generation-level
    metrics and reliability data. Calibration is left fully switched on."""
    report: dict[str, Any] = {}
    prompt_y = torch.tensor([AXES.index(e.axis) for e in examples])
    generated = head_per_axis(examples, generation_per_axis)
    gen_y = torch.tensor([AXES.index(e.axis) for e in generated])
    try:
        for variant in available_variants(mocae):
            routing = use_variant(mocae, variant)
            data = collect_routing(mocae, tokenizer, examples, max_len=max_len or cfg.max_len,
                                   tokens_per_example=cfg.tokens_per_example, routing=routing)
            token_p = data.weights.mean(0)  # (N, K): layer-mean weights per prompt token
            prompt_p, _ = prompt_mean(token_p, data.example)  # every example has tokens: rows in example order
            row: dict[str, Any] = {}
            (row["token"], row["reliability_token"]) = _level(token_p, data.labels)
            (row["prompt"], row["reliability_prompt"]) = _level(run_level(mocae, routing, prompt_p), prompt_y)
            if generated:
                gen_p = generation_weights(mocae, tokenizer, [e.prompt for e in generated], routing, cfg.new_tokens)
                (row["generation"], row["reliability_generation"]) = _level(gen_p, gen_y)
            report[variant] = row
    finally:
        enable_all(mocae)
    return report


def routing_summary(variants: dict[str, Any]) -> dict[str, Any]:
    """Per level: ECE and accuracy of raw routing and of the fullest calibrated variant measured."""
    calibrated = [v for v in CALIBRATION_VARIANTS[1:] if v in variants]
    out: dict[str, Any] = {}
    for level in LEVELS:
        if "uncalibrated" not in variants or level not in variants["uncalibrated"]:
            continue
        pick = {"raw": "uncalibrated"} | ({"calibrated": calibrated[-1]} if calibrated else {})
        out[level] = {label: {"variant": v, **{k: variants[v][level][k] for k in ("ece", "accuracy", "n")}} for label, v in pick.items()}
    return out


def shifted_set(xstest: list[AxisExample]) -> list[AxisExample]:
    """XSTest (train and eval splits) labelled for routing, stratified over its types."""
    return stratified(xstest_routing_set(xstest, XSTEST_SPLITS), key=lambda e: e.meta.get("type", ""))


ROUTING_SAMPLER = Sampler(
    "routed_forward_and_generation",
    "per calibration variant: one forward per prompt recording every prompt token's weights; greedy answers "
    "(EvalConfig.new_tokens) of the first generation_per_axis prompts per axis recording the generated tokens' weights",
    lambda ctx, mocae, items: routing_report(mocae, ctx.tokenizer, items, ctx.cfg, generation_per_axis=ctx.cfg.generation_per_axis,
                                             max_len=ctx.max_len),
    room=lambda cfg: cfg.new_tokens,
)


def _passthrough(ctx: Context, items: list[AxisExample], out: dict[str, Any]) -> dict[str, Any]:
    return out


ROUTING_TASKS: tuple[Task, ...] = (
    Task("routing_eval", 2, PromptSet("routing_eval", "distinct eval-split prompts per axis, mixed over sources",
                                      lambda ctx: routing_examples(ctx.examples, ctx.cfg.routing_per_axis),
                                      lambda cfg: 3 * cfg.routing_per_axis),
         ROUTING_SAMPLER, _passthrough, scope="model", description="routing calibration on the eval split"),
    Task("routing_shifted", 2, PromptSet("routing_xstest_shifted", "XSTest train + eval splits, stratified over its types; "
                                         "safe prompts labelled helpful, unsafe harmless",
                                         lambda ctx: shifted_set(ctx.eval_sets["xstest"]), lambda cfg: cfg.shifted),
         ROUTING_SAMPLER, _passthrough, scope="model", description="routing calibration under shift (XSTest)"),
)
