"""MoCaEModel: a Hugging Face causal LM with three HHH experts and a router per decoder layer.

Injection follows PEFT's tuners: every target linear inside a decoder layer is swapped for a
`MoCaELinear`, and a forward pre-hook on each decoder layer runs that layer's router on the
layer's input hidden state, turns the logits into weights p (calibrated or not, soft or top-1,
optionally replaced or biased by an axis prior) and hands them to the layer's experts. One forward
of the base model thus routes every token at every layer — no second pass.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

from alignx_demo.config import AXES, MoCaEConfig, RoutingSettings
from alignx_demo.modeling.calibration import CalibrationStack
from alignx_demo.modeling.families import decoder_layers, default_targets
from alignx_demo.modeling.layer import CausalMean, MoCaELinear, Router, RoutingSlot

_CONTEXT_ATTR = "alignx_router_context"
"""Attribute of a KV cache that carries the routers' running means (`CausalMean`) to its next forward."""


class RoutingRecord:
    """What the routers produced during the forwards run inside `MoCaEModel.record()`.

    `weights[ℓ]` and `logits[ℓ]` hold one (B, T, K) tensor per forward for layer ℓ; `features[ℓ]`
    holds the router features (B, T, D) when asked for. Tensors are detached unless recording for
    training.
    """

    def __init__(self, n_layers: int, features: bool, detach: bool) -> None:
        self.want_features = features
        self.detach = detach
        self.weights: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
        self.logits: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
        self.features: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]

    def add(self, layer: int, logits: torch.Tensor, weights: torch.Tensor, features: torch.Tensor) -> None:
        keep = (lambda t: t.detach()) if self.detach else (lambda t: t)
        self.logits[layer].append(keep(logits))
        self.weights[layer].append(keep(weights))
        if self.want_features:
            self.features[layer].append(keep(features))

    def stacked_weights(self, forward: int = -1) -> torch.Tensor:
        """Weights of one recorded forward as (L, B, T, K)."""
        return torch.stack([w[forward] for w in self.weights])


class MoCaEModel(nn.Module):
    """A frozen base causal LM + three LoRA experts + one router per decoder layer.

    `routing` (a RoutingSettings) is read on every forward, so modes switch per call without
    reloading. `lock` serialises users of the shared model (routing settings and recording are
    per-call state held on the model while it runs).
    """

    def __init__(
        self,
        model: nn.Module,
        config: MoCaEConfig | None = None,
        calibration: CalibrationStack | None = None,
    ) -> None:
        super().__init__()
        config = config or MoCaEConfig()
        if not config.target_modules:
            config.target_modules = default_targets(model.config.model_type)
        config.base_model_type = model.config.model_type
        self.model = model
        self.config = config
        self.calibration = calibration
        self.routing = RoutingSettings()
        self.lock = threading.RLock()
        self._record: RoutingRecord | None = None
        for p in model.parameters():
            p.requires_grad_(False)
        self.layers_path, layers = decoder_layers(model)
        self.slots = [RoutingSlot() for _ in layers]
        hidden = model.config.hidden_size
        self.routers = nn.ModuleList(Router(hidden, config.router_norm, config.router_context) for _ in layers)
        self._context: CausalMean | None = None
        model.register_forward_pre_hook(self._start_forward, with_kwargs=True)
        model.register_forward_hook(self._end_forward, with_kwargs=True)
        self.expert_modules: dict[str, MoCaELinear] = {}
        for index, layer in enumerate(layers):
            self._inject(f"{self.layers_path}.{index}", layer, self.slots[index])
            layer.register_forward_pre_hook(self._make_hook(index), with_kwargs=True)
        if not self.expert_modules:
            raise ValueError(f"no module matched target_modules {config.target_modules}")
        device = next(model.parameters()).device
        self.routers.to(device)
        if calibration is not None:
            calibration.to(device)
        for module in self.expert_modules.values():
            module.lora_A.data = module.lora_A.data.to(device)
            module.lora_B.data = module.lora_B.data.to(device)

    def _inject(self, prefix: str, layer: nn.Module, slot: RoutingSlot) -> None:
        for name, module in list(layer.named_modules()):
            if not any(name == t or name.endswith("." + t) for t in self.config.target_modules):
                continue
            parent_name, _, leaf = name.rpartition(".")
            parent = layer.get_submodule(parent_name) if parent_name else layer
            wrapped = MoCaELinear(module, self.config.rank, self.config.scaling, slot)
            setattr(parent, leaf, wrapped)
            self.expert_modules[f"{prefix}.{name}"] = wrapped

    def _start_forward(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Pick up the running means a KV cache carries (a continued sequence) or start fresh ones."""
        cache = kwargs.get("past_key_values")
        continued = cache is not None and hasattr(cache, "get_seq_length") and cache.get_seq_length() > 0
        mask = kwargs.get("attention_mask")
        mask = mask if isinstance(mask, torch.Tensor) and mask.ndim == 2 else None
        context = getattr(cache, _CONTEXT_ATTR, None) if continued else None
        self._context = context or CausalMean(self.n_layers)
        self._context.mask = mask

    def _end_forward(self, _module: nn.Module, args: tuple, kwargs: dict, output) -> None:
        cache = getattr(output, "past_key_values", None)
        if cache is not None and self._context is not None:
            self._context.mask = None
            setattr(cache, _CONTEXT_ATTR, self._context)
        self._context = None

    def _make_hook(self, index: int):
        def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            self.slots[index].weights = self._route(index, hidden)

        return hook

    def _route(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        router = self.routers[index]
        features = router.features(hidden, self._context, index)
        logits = router(features)
        settings = self.routing
        if settings.calibrated and self.calibration is not None:
            weights = self.calibration.probs(index, logits, features)
        else:
            weights = F.softmax(logits.float(), dim=-1)
        if settings.axis_prior is not None:
            prior = torch.tensor(settings.axis_prior, dtype=weights.dtype, device=weights.device)
            weights = (1.0 - settings.prior_blend) * weights + settings.prior_blend * prior
        if settings.mode == "top1":
            weights = F.one_hot(weights.argmax(dim=-1), len(AXES)).to(weights.dtype)
        if self._record is not None:
            self._record.add(index, logits, weights, features)
        return weights

    @property
    def n_layers(self) -> int:
        return len(self.routers)

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def generate(self, *args, **kwargs):
        return self.model.generate(*args, **kwargs)

    @contextmanager
    def routed(self, settings: RoutingSettings) -> Iterator[None]:
        """Run the enclosed forwards with these routing settings, restoring the previous ones."""
        previous, self.routing = self.routing, settings
        try:
            yield
        finally:
            self.routing = previous

    @contextmanager
    def record(self, features: bool = False, detach: bool = True) -> Iterator[RoutingRecord]:
        """Record router logits, weights (and optionally features) of the enclosed forwards."""
        record = RoutingRecord(self.n_layers, features, detach)
        self._record = record
        try:
            yield record
        finally:
            self._record = None

    def expert_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.expert_modules.values() for p in (m.lora_A, m.lora_B)]

    def count_parameters(self) -> dict[str, int]:
        """Parameters of the base, the experts and the routers (4-bit weights counted as elements)."""
        added = {id(p) for p in self.expert_parameters()} | {id(p) for p in self.routers.parameters()}
        base = 0
        for p in self.model.parameters():
            if id(p) in added:
                continue
            n = p.numel()
            if getattr(p, "quant_state", None) is not None:  # packed 4-bit: two weights per byte
                n = int(torch.Size(p.quant_state.shape).numel())
            base += n
        return {
            "base": base,
            "experts": sum(p.numel() for p in self.expert_parameters()),
            "routers": sum(p.numel() for p in self.routers.parameters()),
        }
