"""The two trainable pieces of MoCaE: the per-layer router and the K-expert linear.

Shapes in comments: B batch, T tokens, D input features, O output features, r LoRA rank, K experts
(the checkpoint's axes, `MoCaEConfig.axes`: 3 for the HHH bundle).

Both are built beside what they serve — a router on its decoder layer's device, an expert's A and B
on the device of the linear they wrap — so a base split over devices (`device_map="auto"`) needs no
transfers inside a layer. Experts compute in the base's compute dtype (bf16 for a 4-bit or bf16 base
on CUDA), in fp32 on the CPU; routers compute in fp32.

Both are written as PEFT writes a LoRA layer: the base's output plus the experts' low-rank update, in
a few readable lines. Hand-made speed devices (W0 and A stored as one tensor so one matmul gave both,
modules' own dicts read instead of attributes) were removed when a side-by-side measurement on a quiet
machine showed they did not earn their complexity: soft decoding ÷ base at batch 1 / 8 was 1.09 / 1.05
with them and 1.07 / 0.99 without at hidden 1024, 1.00 / 1.10 against 1.05 / 0.98 at the Llama-7B
shapes (per-round spreads 0.86–1.27), and 1.19–1.33 / 1.17–1.23 with them against
1.21–1.22 / 1.17–1.23 without on the demo model's shapes (`bench --shape-of assets/demo-model`,
docs/performance.md); the served 4-bit base never took the fused path.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

HALF = (torch.float16, torch.bfloat16)


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for a module without tensors)."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def compute_dtype(base: nn.Module) -> torch.dtype:
    """The dtype a base linear computes in: a bitsandbytes 4-bit layer's `compute_dtype` (or the dtype
    its weights were quantised from), else the weight's dtype; fp32 for anything else."""
    dtype = getattr(base, "compute_dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    weight = getattr(base, "weight", None)
    if weight is None:
        return torch.float32
    if weight.dtype.is_floating_point:
        return weight.dtype
    state = getattr(weight, "quant_state", None)
    return getattr(state, "dtype", None) or torch.float32


def expert_dtype(base: nn.Module, device: torch.device) -> torch.dtype:
    """Experts compute in the base's compute dtype, except half precision on the CPU, where fp32 is
    both faster and exact (docs/api.md's rule: bf16 on CUDA for a bf16 or 4-bit base, fp32 on CPU)."""
    dtype = compute_dtype(base)
    return torch.float32 if device.type == "cpu" and dtype in HALF else dtype


class RoutingSlot:
    """Holds the routing weights a decoder layer's router computed for the current forward.

    The router writes it in the layer's forward pre-hook, the layer's MoCaELinear modules read
    it. It is a plain object, not a module, so it is never saved or moved with the model. Setting
    `weights` clears the cached copy in the experts' dtype, which the first expert of the layer
    makes (`per_expert`) when the dtypes differ and the others reuse.
    """

    __slots__ = ("_weights", "_cast", "k")

    def __init__(self, k: int) -> None:
        self.k = k  # experts of the layer
        self._weights: torch.Tensor | None = None  # (B, T, K)
        self._cast: torch.Tensor | None = None  # _weights in the experts' dtype, when it differs

    @property
    def weights(self) -> torch.Tensor | None:
        return self._weights

    @weights.setter
    def weights(self, value: torch.Tensor | None) -> None:
        self._weights, self._cast = value, None

    def per_expert(self, dtype: torch.dtype) -> torch.Tensor:
        """p as (B·T, K, 1) in `dtype`: it broadcasts over each expert's r rank columns."""
        w = self._weights
        if w is None:
            raise RuntimeError("MoCaELinear called outside a routed forward (no routing weights set)")
        if w.dtype != dtype:
            if self._cast is None or self._cast.dtype != dtype:
                self._cast = w.to(dtype)
            w = self._cast
        return w.reshape(-1, self.k, 1)


class CausalMean:
    """The causal running mean of a layer's router features over the sequence so far.

    One token cannot know what the rest of the prompt asks ("How do I…" starts helpful and harmful
    requests alike), so each token's router also sees c_t = mean_{s ≤ t, mask_s = 1} f_s, the mean of
    the (normed) features of the valid positions up to and including t. Padding positions (mask 0)
    are left out. Across KV-cache forwards the running mean and count per layer are carried in this
    object (MoCaEModel keeps one per cache), so a streamed decode gives what a full recompute of the
    sequence gives (to rounding). Without a mask the count is a plain number and a one-token step is
    one op, c_t = lerp(c_{t−1}, f_t, 1/t).
    """

    def __init__(self, n_layers: int, mask: torch.Tensor | None = None) -> None:
        self.means: list[torch.Tensor | None] = [None] * n_layers  # (B, 1, D) per layer
        self.counts: list[torch.Tensor | int] = [0] * n_layers  # an int, or (B, 1, 1) once a mask was seen
        self.mask = mask  # (B, T) of the current forward, or None: every position is valid

    def __call__(self, layer: int, features: torch.Tensor) -> torch.Tensor:
        """c (B, T, D) for this forward's features (B, T, D); updates the carried mean."""
        previous, count = self.means[layer], self.counts[layer]
        steps = features.shape[1]
        if self.mask is None and isinstance(count, int):
            if steps == 1:
                means = features if previous is None else torch.lerp(previous, features, 1.0 / (count + 1))
            else:
                sums = features.cumsum(dim=1)
                if previous is not None:
                    sums = sums + previous * count
                means = sums / torch.arange(count + 1, count + steps + 1, device=features.device,
                                            dtype=features.dtype).unsqueeze(-1)
            self.counts[layer] = count + steps
        else:
            m = (self.mask[:, -steps:] if self.mask is not None else features.new_ones(features.shape[:2]))
            m = m.to(device=features.device, dtype=features.dtype).unsqueeze(-1)  # (B, T, 1)
            sums, counts = (features * m).cumsum(dim=1), m.cumsum(dim=1)
            if previous is not None:
                sums, counts = sums + previous * count, counts + count
            self.counts[layer] = counts[:, -1:]
            means = sums / counts.clamp_min(1.0)
        last = means if steps == 1 else means[:, -1:]
        self.means[layer] = last.detach() if last.requires_grad else last
        return means


class Router(nn.Module):
    """z = W · u + b ∈ R^K per token, from the decoder layer's input hidden state h.

    u = rmsnorm(h_t), and with `use_context` also the causal mean of rmsnorm(h_s) over s ≤ t
    (`CausalMean`): u = [rmsnorm(h_t); c_t] ∈ R^{2D}. Routing stays per token and per layer, in
    the one forward: one matmul routes all B·T tokens of the layer. Zero-initialised, so an
    untrained router routes uniformly. The norm has no parameters: its only job is to keep the
    logits' scale independent of the residual stream's norm, which grows with depth.
    """

    def __init__(self, hidden_size: int, k: int, use_norm: bool = True, use_context: bool = False) -> None:
        super().__init__()
        self.use_norm = use_norm
        self.use_context = use_context
        self.proj = nn.Linear(hidden_size * (2 if use_context else 1), k)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def features(self, hidden: torch.Tensor, context: CausalMean | None = None, layer: int = 0) -> torch.Tensor:
        """The router's input u (B, T, D or 2D), in the router's dtype (fp32), on its device: what
        calibrators and feature banks see."""
        weight = self.proj.weight
        if hidden.dtype != weight.dtype or hidden.device != weight.device:
            hidden = hidden.to(device=weight.device, dtype=weight.dtype)
        f = F.rms_norm(hidden, (hidden.shape[-1],), eps=1e-6) if self.use_norm else hidden
        if not self.use_context:
            return f
        if context is None:
            context = CausalMean(layer + 1)
        return torch.cat([f, context(layer, f)], dim=-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)  # (B, T, K)


def _in_out_features(base: nn.Module) -> tuple[int, int]:
    if hasattr(base, "in_features") and hasattr(base, "out_features"):
        return int(base.in_features), int(base.out_features)
    if type(base).__name__ == "Conv1D":  # GPT-2: weight is (in, out)
        d_in, d_out = base.weight.shape
        return int(d_in), int(d_out)
    raise TypeError(f"cannot inject experts into {type(base).__name__}: not a linear layer")


class MoCaELinear(nn.Module):
    """y = W0·x + s · Σ_k p_k · B_k A_k x.

    The K LoRA experts (K = `slot.k`, the checkpoint's axes) are stored stacked: A = [A_1; …; A_K] ∈ R^{Kr×D}
    and B = [B_1 … B_K] ∈ R^{O×Kr}. One matmul gives all K rank-r projections, each rank block is
    scaled by its routing weight (one broadcast multiply by the layer's p), and one matmul with the
    stacked B maps back. The base module (nn.Linear, bitsandbytes Linear4bit or GPT-2's Conv1D) is kept
    and frozen. A and B are created on the base module's device in `expert_dtype(base)` unless `dtype`
    says otherwise.
    """

    def __init__(self, base: nn.Module, rank: int, scaling: float, slot: RoutingSlot,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.base = base
        self.rank = rank
        self.scaling = scaling
        self.slot = slot
        k = slot.k  # the layer's experts, one per axis
        d_in, d_out = _in_out_features(base)
        self.in_features, self.out_features = d_in, d_out
        device = module_device(base)
        dtype = dtype or expert_dtype(base, device)
        self.lora_A = nn.Parameter(torch.empty(k * rank, d_in, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(d_out, k * rank, device=device, dtype=dtype))
        for j in range(k):  # PEFT's default init per expert: A Kaiming-uniform, B zero
            nn.init.kaiming_uniform_(self.lora_A[j * rank : (j + 1) * rank], a=math.sqrt(5))

    def expert(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Expert k's (A_k, B_k) views, shaped (r, D) and (O, r) as in PEFT."""
        block = slice(k * self.rank, (k + 1) * self.rank)
        return self.lora_A[block], self.lora_B[:, block]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        a = F.linear(x.to(self.lora_A.dtype), self.lora_A)  # (…, K·r)
        p = self.slot.per_expert(a.dtype)  # (B·T, K, 1)
        scaled = (a.reshape(-1, self.slot.k, self.rank) * p).reshape(a.shape)  # each rank block times its p_k
        return y + (F.linear(scaled, self.lora_B) * self.scaling).to(y.dtype)
