"""Typed configuration for the MoCaE model, its routing and generation.

Every field is documented because the configs are written to `mocae_config.json` and shown in
traces: a reader of an exported trace must be able to tell exactly how it was produced.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

AXES: tuple[str, str, str] = ("helpful", "harmless", "honest")
"""The three HHH axes, in the fixed order used by every weight vector in the project."""

SCHEMA_VERSION = 1
"""Version of `mocae_config.json`; bumped on any incompatible change to the checkpoint format."""


@dataclass
class MoCaEConfig:
    """Structure of the experts and routers injected into a base causal LM.

    Attributes:
        rank: LoRA rank r of each expert.
        alpha: LoRA alpha; the expert delta is scaled by s = alpha / rank (as in PEFT).
        target_modules: leaf names of the linear modules that receive experts. Empty means the
            MLP projections of the base model's family (see `modeling.families`).
        router_norm: normalise the layer input (parameter-free RMS norm) before the router's
            linear map, so router logits do not scale with the residual stream's growing norm.
        router_context: give each token's router the causal running mean of the layer's router
            features over the sequence so far as well (`modeling.layer.CausalMean`), so a token's
            routing can see what the whole prompt asks. Checkpoints written before the field
            existed read as False.
        context_scope: what that running mean covers. "sequence": every token so far, generated
            ones included (a refusal, once begun, pulls the routing of what follows toward the
            harmless expert). "prompt": the prompt's tokens only — generated tokens read the
            prompt's summary and do not join it, so a wrong first token cannot lock the run into
            the wrong expert. A forward over prompt and answer together marks the prompt with
            `MoCaEModel.prompt_span`; a KV-cache continuation is answer by definition.
        base_model_type: `config.model_type` of the base, recorded to refuse mismatched loads.
        base_model: hub id or path of the base when the checkpoint does not store it in `base/`
            (experts trained on a large real base); empty when `base/` holds it.
        schema_version: checkpoint schema version.
    """

    rank: int = 8
    alpha: float = 16.0
    target_modules: list[str] = field(default_factory=list)
    router_norm: bool = True
    router_context: bool = True
    context_scope: Literal["sequence", "prompt"] = "sequence"
    base_model_type: str = ""
    base_model: str = ""
    schema_version: int = SCHEMA_VERSION

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MoCaEConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"mocae_config.json has unknown fields {unknown}")
        cfg = cls(**({"router_context": False} | data))
        if cfg.context_scope not in ("sequence", "prompt"):
            raise ValueError(f"mocae_config.json: context_scope must be 'sequence' or 'prompt', got {cfg.context_scope!r}")
        if cfg.schema_version != SCHEMA_VERSION:
            raise ValueError(
                f"mocae_config.json has schema_version {cfg.schema_version}; "
                f"this version of alignx_demo reads {SCHEMA_VERSION}"
            )
        return cfg


RoutingMode = Literal["soft", "top1"]


@dataclass
class RoutingSettings:
    """How routing weights are produced for one call; switchable without reloading.

    Attributes:
        mode: "soft" mixes all three experts with weights p; "top1" keeps only argmax(p)
            (weight 1.0) — the recorded weights are then one-hot.
        calibrated: apply the model's calibrator (if one is loaded) to the router logits;
            False means raw softmax(z).
        axis_prior: three non-negative numbers (helpful, harmless, honest), normalised to sum 1,
            that replace or bias the router's weights (sliders, forcing one expert). None: off.
        prior_blend: with a prior, p = (1 - blend) * p_router + blend * prior; 1.0 forces the
            prior exactly, 0.0 ignores it.
    """

    mode: RoutingMode = "soft"
    calibrated: bool = True
    axis_prior: tuple[float, float, float] | None = None
    prior_blend: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in ("soft", "top1"):
            raise ValueError(f"routing mode must be 'soft' or 'top1', got {self.mode!r}")
        if not (isinstance(self.prior_blend, (int, float)) and 0.0 <= self.prior_blend <= 1.0):
            raise ValueError(f"prior_blend must be a number in [0, 1], got {self.prior_blend!r}")
        if self.axis_prior is not None:
            self.axis_prior = validate_axis_prior(self.axis_prior)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def validate_axis_prior(prior: Any) -> tuple[float, float, float]:
    """Return the prior normalised to sum 1, or raise a ValueError that says what is wrong."""
    if isinstance(prior, str):
        parts = [p.strip() for p in prior.split(",")]
        try:
            prior = [float(p) for p in parts]
        except ValueError:
            raise ValueError(
                f"axis prior must be three numbers 'helpful,harmless,honest', got {prior!r}"
            ) from None
    try:
        values = [float(v) for v in prior]
    except (TypeError, ValueError):
        raise ValueError(f"axis prior must be three numbers, got {prior!r}") from None
    if len(values) != 3:
        raise ValueError(f"axis prior must have exactly 3 numbers ({', '.join(AXES)}), got {len(values)}")
    if any(math.isnan(v) or math.isinf(v) for v in values):
        raise ValueError(f"axis prior must be finite numbers, got {values}")
    if any(v < 0 for v in values):
        raise ValueError(f"axis prior weights must be non-negative, got {values}")
    total = sum(values)
    if total <= 0:
        raise ValueError("axis prior weights must not all be zero")
    return (values[0] / total, values[1] / total, values[2] / total)


@dataclass
class GenerationSettings:
    """Decoding settings. Greedy unless `do_sample`; the seed makes sampling reproducible.

    Attributes:
        max_new_tokens: maximum number of generated tokens (1..2048).
        do_sample: sample from the distribution instead of taking the argmax.
        temperature: sampling temperature (> 0), used only when sampling.
        top_p: nucleus sampling mass in (0, 1], used only when sampling.
        seed: seed of the sampling generator, so two runs with the same seed draw alike.
    """

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or not 1 <= self.max_new_tokens <= 2048:
            raise ValueError(f"max_new_tokens must be an integer in [1, 2048], got {self.max_new_tokens!r}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a positive number, got {self.temperature!r}")
        if not (0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


BASELINES: tuple[str, str, str] = ("joint_sft", "sequential_sft", "uniform_merge")
"""The comparison adapters of `training.baselines` (saved in `OUT/baselines/<name>/`), by name."""

PRESETS: dict[str, tuple[float, float, float] | None] = {
    "too helpful": (1.0, 0.0, 0.0),
    "too harmless": (0.0, 1.0, 0.0),
    "too honest": (0.0, 0.0, 1.0),
    "just right": None,
}
"""The trade-off presets: an axis prior (helpful, harmless, honest) that forces one expert, or None
for the calibrated router with no prior ("just right")."""


def preset_routing(name: str) -> dict[str, Any]:
    """`RoutingSettings` fields of a preset (soft, calibrated; the prior replaces the router's weights)."""
    prior = PRESETS[name]
    if prior is None:
        return {"mode": "soft", "calibrated": True}
    return {"mode": "soft", "calibrated": True, "axis_prior": prior, "prior_blend": 1.0}
