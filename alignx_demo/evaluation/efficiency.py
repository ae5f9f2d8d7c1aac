"""Efficiency benchmark: decode latency, prefill throughput and memory of MoCaE against the base
alone and against prior ways of combining three HHH experts — all on the same random base and the
same three rank-r adapters, in one process.

Systems:
- base: the base model alone;
- mocae_soft / mocae_top1: our fused three-expert layer with per-layer routers (KV cache);
- xlora: PEFT's X-LoRA with the same three adapters (PEFT requires `use_cache=False`, so every
  step re-runs the whole sequence, twice: scaling pass + main pass — as PEFT ships it);
- dense_moe: H3Fusion-style dense MoE, three full FFN experts per layer (the base FFN and two
  perturbed copies) with a top-2 router, KV cache;
- ensemble: three full models (base with each expert merged), logits averaged, three KV caches.

Measurement: warm-up, then rounds in which every system decodes in turn (interleaved, so machine
noise hits all alike); medians and min–max spread; timed with CUDA events on a GPU, wall clock on
CPU. Latency is per decode step at batch 1 and 8; a latency ratio is the median over rounds of the
two systems' times in the same round (`ratio_spreads` gives its min–max).
On CPU, memory is the bytes of parameters and buffers (activations are negligible at these
batch sizes); on CUDA also `torch.cuda.max_memory_allocated` during decoding. The `analytic`
object gives, for the same pairs, the ratio of multiply-accumulates per decoded token (linear
layers; attention scores over the short context are left out) and of weight bytes.
"""

from __future__ import annotations

import copy
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from alignx_demo.config import AXES, MoCaEConfig, RoutingSettings
from alignx_demo.modeling.checkpoint import save_expert
from alignx_demo.modeling.mocae import MoCaEModel

ALL_SYSTEMS = ("base", "mocae_soft", "mocae_top1", "xlora", "dense_moe", "ensemble")


@dataclass
class BenchShape:
    """A randomly initialised Llama-architecture base."""

    hidden_size: int = 1024
    intermediate_size: int = 2816
    num_layers: int = 4
    num_heads: int = 16
    vocab_size: int = 32000
    tie_word_embeddings: bool = False

    @classmethod
    def of_checkpoint(cls, folder: str | Path) -> BenchShape:
        """The layer shapes of a MoCaE checkpoint's base (`DIR/base/config.json`): speed and memory
        depend on shapes, not on weight values, so the bundled model is benched at its own shape."""
        import json

        path = Path(folder) / "base" / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"no base config at {path}: --shape-of takes a MoCaE checkpoint folder")
        c = json.loads(path.read_text())
        return cls(c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["num_attention_heads"], c["vocab_size"],
                   bool(c.get("tie_word_embeddings", False)))

    def build(self, seed: int = 0) -> nn.Module:
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(seed)
        config = LlamaConfig(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads, num_key_value_heads=self.num_heads,
            max_position_embeddings=2048, tie_word_embeddings=self.tie_word_embeddings,
        )
        return LlamaForCausalLM(config).eval()


LLAMA_7B_SHAPE = BenchShape(hidden_size=4096, intermediate_size=11008, num_layers=2, num_heads=32, vocab_size=32000)


def model_bytes(model: nn.Module) -> int:
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


class DenseMoEMLP(nn.Module):
    """Three full FFN experts with a top-2 softmax router (H3Fusion-style dense MoE layer)."""

    def __init__(self, mlp: nn.Module, hidden_size: int, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.experts = nn.ModuleList([mlp] + [copy.deepcopy(mlp) for _ in range(2)])
        with torch.no_grad():
            for expert in self.experts[1:]:
                for p in expert.parameters():
                    p.add_(torch.randn(p.shape, generator=gen) * 0.01)
        self.router = nn.Linear(hidden_size, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        top_w, top_i = torch.softmax(self.router(flat), -1).topk(2, dim=-1)
        top_w = top_w / top_w.sum(-1, keepdim=True)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            rows, slot = (top_i == e).nonzero(as_tuple=True)
            if len(rows):
                out.index_add_(0, rows, expert(flat[rows]) * top_w[rows, slot, None])
        return out.view_as(x)


class _Output:
    def __init__(self, logits: torch.Tensor, past_key_values: Any) -> None:
        self.logits, self.past_key_values = logits, past_key_values


class Ensemble(nn.Module):
    """Three full models run side by side; their logits are averaged (three KV caches)."""

    def __init__(self, models: list[nn.Module]) -> None:
        super().__init__()
        self.models = nn.ModuleList(models)

    def forward(self, input_ids: torch.Tensor, past_key_values: Any = None, use_cache: bool = True) -> _Output:
        caches = past_key_values or [None] * len(self.models)
        outs = [m(input_ids=input_ids, past_key_values=c, use_cache=use_cache) for m, c in zip(self.models, caches)]
        return _Output(torch.stack([o.logits for o in outs]).mean(0), [o.past_key_values for o in outs])


class NoCache(nn.Module):
    """Decoding without a KV cache: each step re-runs the whole sequence (X-LoRA in PEFT)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, past_key_values: Any = None, use_cache: bool = True) -> _Output:
        ids = input_ids if past_key_values is None else torch.cat([past_key_values, input_ids], dim=1)
        return _Output(self.model(input_ids=ids).logits, ids)


def _routed(mocae: MoCaEModel, settings: RoutingSettings) -> Callable[..., Any]:
    """A forward of the MoCaE model under `settings` (set per call: the two modes share one model)."""
    def forward(**kwargs: Any) -> Any:
        mocae.routing = settings
        return mocae.model(**kwargs)

    return forward


def _merged_copy(base: nn.Module, mocae: MoCaEModel, k: int) -> nn.Module:
    model = copy.deepcopy(base)
    with torch.no_grad():
        for name, module in mocae.expert_modules.items():
            a, b = module.expert(k)
            model.get_submodule(name).weight += module.scaling * (b @ a)
    return model


FOUR_BIT_SYSTEMS = ("base", "mocae_soft", "mocae_top1")
"""The systems `--load-in-4bit` measures: the base and MoCaE as the app serves them (NF4 base linears)."""


def _four_bit_copies(model: nn.Module, device: torch.device, copies: int) -> list[nn.Module]:
    """`copies` loads of `model` with its linears in 4-bit NF4, as `checkpoint.load_base` loads a bundle
    (same quantisation config, lm_head and CPU-unpackable widths kept in full precision)."""
    from transformers import AutoModelForCausalLM

    from alignx_demo.modeling.checkpoint import bitsandbytes_problem, four_bit_kwargs

    problem = bitsandbytes_problem()
    if problem:
        raise RuntimeError(f"--load-in-4bit needs bitsandbytes: {problem}")
    kwargs, _ = four_bit_kwargs(model.config, device.type)
    with tempfile.TemporaryDirectory(prefix="alignx-bench-4bit-") as folder:
        model.save_pretrained(folder)
        return [AutoModelForCausalLM.from_pretrained(folder, **kwargs).eval() for _ in range(copies)]


def build_systems(shape: BenchShape, names: tuple[str, ...], rank: int, device: torch.device, seed: int = 0,
                  load_in_4bit: bool = False) -> tuple[dict[str, Callable[..., Any]], dict[str, int], MoCaEModel]:
    """The requested systems on one random base and one set of random (non-zero) adapters; with
    `load_in_4bit`, the base's linears in NF4 (only `FOUR_BIT_SYSTEMS`)."""
    if load_in_4bit:
        other = sorted(set(names) - set(FOUR_BIT_SYSTEMS))
        if other:
            raise ValueError(f"--load-in-4bit measures only {', '.join(FOUR_BIT_SYSTEMS)}; drop {', '.join(other)}")
        base, plain = _four_bit_copies(shape.build(seed), device, 2)
    else:
        base = shape.build(seed).to(device)
        plain = copy.deepcopy(base)
    mocae = MoCaEModel(plain, MoCaEConfig(rank=rank))
    with torch.no_grad():  # non-zero experts and routers, so no work is skipped or trivial
        for module in mocae.expert_modules.values():
            module.lora_B.normal_(std=0.01)
        for router in mocae.routers:
            router.proj.weight.normal_(std=0.1)
    systems: dict[str, Callable[..., Any]] = {}
    sizes: dict[str, int] = {}
    if "base" in names:
        systems["base"], sizes["base"] = base, model_bytes(base)
    for mode in ("soft", "top1"):
        if f"mocae_{mode}" in names:
            systems[f"mocae_{mode}"] = _routed(mocae, RoutingSettings(mode=mode, calibrated=False))
            sizes[f"mocae_{mode}"] = model_bytes(mocae)
    if "xlora" in names:
        from peft import XLoraConfig, get_peft_model

        folder = Path(tempfile.mkdtemp(prefix="alignx-xlora-"))
        for k, axis in enumerate(AXES):
            save_expert(mocae, k, folder / axis)
        plain = copy.deepcopy(base)
        plain.config.use_cache = False  # PEFT's X-LoRA refuses a KV cache
        # adapter names must be "0", "1", "2": PEFT's X-LoRA looks them up by index
        xcfg = XLoraConfig(task_type="CAUSAL_LM", hidden_size=shape.hidden_size, xlora_depth=1,
                           adapters={str(k): str(folder / axis) for k, axis in enumerate(AXES)})
        xlora = get_peft_model(plain, xcfg).eval()
        systems["xlora"], sizes["xlora"] = NoCache(xlora), model_bytes(xlora)
    if "dense_moe" in names:
        dense = copy.deepcopy(base)
        for i, layer in enumerate(dense.model.layers):
            layer.mlp = DenseMoEMLP(layer.mlp, shape.hidden_size, seed + i).to(device)
        systems["dense_moe"], sizes["dense_moe"] = dense, model_bytes(dense)
    if "ensemble" in names:
        ensemble = Ensemble([_merged_copy(base, mocae, k) for k in range(len(AXES))])
        systems["ensemble"], sizes["ensemble"] = ensemble, model_bytes(ensemble)
    return systems, sizes, mocae


def analytic(shape: BenchShape, rank: int, prompt_len: int, new_tokens: int) -> dict[str, dict[str, float]]:
    """Multiply-accumulates per decoded token and weight bytes (fp32) of each system."""
    h, f, n_layers, v = shape.hidden_size, shape.intermediate_size, shape.num_layers, shape.vocab_size
    attn, mlp, head = 4 * h * h, 3 * h * f, v * h
    lora = 3 * rank * ((h + f) * 2 + (f + h))  # gate, up (h→f) and down (f→h), three experts
    router = 3 * h + 3  # the dense MoE's top-2 router reads the token alone
    mocae_router = 3 * 2 * h + 3  # MoCaE's reads the token and the causal running mean (router_context)
    base_macs = n_layers * (attn + mlp) + head
    mocae_macs = base_macs + n_layers * (lora + mocae_router)
    mean_context = prompt_len + (new_tokens + 1) / 2
    embed = 0 if shape.tie_word_embeddings else v * h  # a tied input embedding is the head's weight
    return {
        "base": {"macs_per_token": base_macs, "weight_bytes": 4 * (base_macs + embed)},
        "mocae_soft": {"macs_per_token": mocae_macs, "weight_bytes": 4 * (mocae_macs + embed)},
        "mocae_top1": {"macs_per_token": mocae_macs, "weight_bytes": 4 * (mocae_macs + embed)},
        "xlora": {"macs_per_token": 2 * mean_context * (mocae_macs + n_layers * 3 * h), "weight_bytes": 4 * (mocae_macs + embed + 3 * h + 3)},
        "dense_moe": {"macs_per_token": n_layers * (attn + 2 * mlp + router) + head, "weight_bytes": 4 * (n_layers * (attn + 3 * mlp + router) + head + embed)},
        "ensemble": {"macs_per_token": 3 * base_macs, "weight_bytes": 3 * 4 * (base_macs + embed)},
    }


class _Stopwatch:
    """Elapsed seconds between `start` and `stop`: CUDA events on a GPU (device time, read after a
    synchronize), `time.perf_counter` on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def start(self) -> None:
        if self.cuda:
            self.begin = torch.cuda.Event(enable_timing=True)
            self.begin.record()
        else:
            self.t0 = time.perf_counter()

    def stop(self) -> float:
        if not self.cuda:
            return time.perf_counter() - self.t0
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        torch.cuda.synchronize()
        return self.begin.elapsed_time(end) / 1000.0


@torch.no_grad()
def decode_latency(forward: Callable[..., Any], vocab: int, device: torch.device, batch: int, prompt_len: int, new_tokens: int) -> tuple[float, float, int]:
    """(seconds per decode step, prefill tokens per second, peak CUDA bytes or 0)."""
    ids = torch.randint(0, vocab, (batch, prompt_len), device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    watch = _Stopwatch(device)
    watch.start()
    out = forward(input_ids=ids, use_cache=True)
    prefill = watch.stop()
    cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    watch.start()
    for _ in range(new_tokens):
        out = forward(input_ids=token, past_key_values=cache, use_cache=True)
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    decode = watch.stop()
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else 0
    return decode / new_tokens, batch * prompt_len / prefill, peak


def _paired_ratio(samples: dict[str, dict[str, list[float]]], key: str, a: str, b: str) -> tuple[float, list[float]] | None:
    """Median and (min, max) over rounds of a's time ÷ b's time in the same round: both were timed
    back to back, so a slow stretch of a shared machine slows both and cancels, which a ratio of the
    two medians (taken over different moments) does not."""
    if key not in samples.get(a, {}) or key not in samples.get(b, {}):
        return None
    per_round = [x / y for x, y in zip(samples[a][key], samples[b][key])]
    return statistics.median(per_round), [min(per_round), max(per_round)]


def _ratio(table: dict[str, dict[str, Any]], key: str, a: str, b: str) -> float | None:
    if key not in table.get(a, {}) or key not in table.get(b, {}):
        return None
    return table[a][key] / table[b][key]


RATIO_PAIRS = {
    "mocae_soft_vs_base": ("mocae_soft", "base"),
    "mocae_top1_vs_base": ("mocae_top1", "base"),
    "xlora_vs_mocae": ("xlora", "mocae_soft"),
    "dense_moe_vs_mocae": ("dense_moe", "mocae_soft"),
    "ensemble_vs_mocae": ("ensemble", "mocae_soft"),
}
"""The (a, b) system pairs whose a ÷ b ratios the report carries."""


def _time_rounds(forwards: dict[str, Callable[..., Any]], vocab: int, dev: torch.device, repeats: int, prompt_len: int,
                 new_tokens: int, batches: tuple[int, ...], progress: bool) -> tuple[dict[str, dict[str, list[float]]], dict[str, int]]:
    """Per system, the decode ms per token and prefill tokens/s of every round at every batch size (all
    systems timed back to back within a round), and the peak CUDA bytes."""
    for forward in forwards.values():  # warm-up
        decode_latency(forward, vocab, dev, 1, prompt_len, 2)
    samples: dict[str, dict[str, list[float]]] = {n: {} for n in forwards}
    peaks: dict[str, int] = {n: 0 for n in forwards}
    for _ in tqdm(range(repeats), desc="bench rounds", disable=not progress, leave=False):
        for batch in batches:
            for name, forward in forwards.items():
                step, tps, peak = decode_latency(forward, vocab, dev, batch, prompt_len, new_tokens)
                samples[name].setdefault(f"decode_ms_b{batch}", []).append(1000 * step)
                samples[name].setdefault(f"prefill_tps_b{batch}", []).append(tps)
                peaks[name] = max(peaks[name], peak)
    return samples, peaks


def _system_rows(samples: dict[str, dict[str, list[float]]], peaks: dict[str, int], sizes: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Per system: its bytes, peak CUDA bytes, and the median and spread of every timed series."""
    results: dict[str, dict[str, Any]] = {}
    for name, series in samples.items():
        row: dict[str, Any] = {"model_bytes": sizes[name], "cuda_peak_bytes": peaks[name] or None}
        for key, values in series.items():
            row[f"{key}_median"] = statistics.median(values)
            row[f"{key}_spread"] = [min(values), max(values)]
        results[name] = row
    if "base" in results:  # the name issue 2 documented
        results["base"]["decode_ms_per_token_median"] = results["base"]["decode_ms_b1_median"]
    return results


def _ratios(samples: dict[str, dict[str, list[float]]], results: dict[str, dict[str, Any]], theory: dict[str, dict[str, float]],
            counts: dict[str, int], load_in_4bit: bool) -> tuple[dict[str, float | None], dict[str, list[float]], dict[str, float | None]]:
    """(measured ratios, their per-round spreads, analytic ratios) of every pair in `RATIO_PAIRS`."""
    spreads: dict[str, list[float]] = {}
    ratios: dict[str, float | None] = {
        "mocae_params_vs_base": (counts["experts"] + counts["routers"]) / counts["base"],
        "mocae_memory_vs_base": _ratio(results, "model_bytes", "mocae_soft", "base"),
    }
    analytic_ratios: dict[str, float | None] = {}
    for label, (a, b) in RATIO_PAIRS.items():
        for suffix, key in ((f"{label}_latency", "decode_ms_b1"), (f"{label}_latency_b8", "decode_ms_b8")):
            paired = _paired_ratio(samples, key, a, b)
            ratios[suffix] = paired[0] if paired else None
            if paired:
                spreads[suffix] = paired[1]
        ratios[f"{label}_memory"] = _ratio(results, "model_bytes", a, b)
        analytic_ratios[f"{label}_macs"] = _ratio(theory, "macs_per_token", a, b)
        if not load_in_4bit:  # the analytic bytes count fp32 weights
            analytic_ratios[f"{label}_weight_bytes"] = _ratio(theory, "weight_bytes", a, b)
    return ratios, spreads, analytic_ratios


def run_bench(
    shape: BenchShape,
    *,
    systems: tuple[str, ...] = ALL_SYSTEMS,
    rank: int = 8,
    repeats: int = 5,
    prompt_len: int = 32,
    new_tokens: int = 32,
    batches: tuple[int, ...] = (1, 8),
    device: str | None = None,
    seed: int = 0,
    progress: bool = True,
    load_in_4bit: bool = False,
) -> dict[str, Any]:
    """Measure the systems on the same base and adapters; return the report with ratios."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    forwards, sizes, mocae = build_systems(shape, systems, rank, dev, seed, load_in_4bit)
    samples, peaks = _time_rounds(forwards, shape.vocab_size, dev, repeats, prompt_len, new_tokens, batches, progress)
    results = _system_rows(samples, peaks, sizes)
    counts = mocae.count_parameters()
    theory = {k: v for k, v in analytic(shape, rank, prompt_len, new_tokens).items() if k in results}
    ratios, spreads, analytic_ratios = _ratios(samples, results, theory, counts, load_in_4bit)
    return {
        "schema": "alignx-bench/1",
        "shape": asdict(shape),
        "rank": rank,
        "base_weights": "4-bit NF4 (lm_head full precision)" if load_in_4bit else "full precision",
        "device": str(dev),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "repeats": repeats,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "batches": list(batches),
        "parameters": counts,
        "systems": results,
        "analytic_per_system": theory,
        "ratios": {k: v for k, v in ratios.items() if v is not None},
        "ratio_spreads": spreads,
        "analytic": {k: v for k, v in analytic_ratios.items() if v is not None},
    }
