"""`python -m alignx_demo doctor`: one command that checks a MoCaE checkpoint end to end on a device.

It loads the checkpoint in 4-bit NF4 on the device (`--no-4bit`: full precision), checks where
every expert, router and calibration tensor landed, runs a calibrated soft and a top-1 generation
with sampling (weights finite and summing to one, the same seed drawing the same tokens, the
streamed routing equal to a full recompute), and a short decode bench of the base alone against
MoCaE soft and top-1 (calibrated, as served) and uncalibrated soft on the loaded weights — CUDA
events and `torch.cuda.max_memory_allocated` on a GPU, the wall clock, `tracemalloc` (after the
timing) and the resident set size on the CPU. Everything it saw goes
to one JSON file: versions, the device, and per step pass/fail, the error text and timings. A
failing step does not stop the later ones that do not depend on it; the exit code is 0 when every
step passed, 1 otherwise.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
import traceback
import tracemalloc
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

SCHEMA = "alignx-doctor/1"
PROMPT = "How do I keep bread fresh for longer?"
PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "safetensors", "tokenizers", "gradio", "spaces")


class StepFailed(RuntimeError):
    """A check inside a step did not hold; the message says which."""


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version(), "torch_cuda": torch.version.cuda}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"type": device.type, "platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
                            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda" and torch.cuda.is_available():
        index = device.index or 0
        props = torch.cuda.get_device_properties(index)
        info |= {"name": props.name, "capability": list(torch.cuda.get_device_capability(index)),
                 "total_memory_bytes": props.total_memory, "device_count": torch.cuda.device_count(),
                 "bf16_supported": torch.cuda.is_bf16_supported()}
    return info


def rss_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # psutil missing or unsupported here: RSS is then left out
        return None


class Doctor:
    """Runs the steps in order and keeps what each saw."""

    def __init__(self, model: Path, device: str, *, base_model: str | None = None, load_in_4bit: bool = True,
                 new_tokens: int = 16, bench_tokens: int = 16, bench_rounds: int = 3, trust_remote_code: bool = False) -> None:
        self.model, self.base_model = Path(model), base_model
        self.device = torch.device(device)
        self.load_in_4bit, self.trust_remote_code = load_in_4bit, trust_remote_code
        self.new_tokens, self.bench_tokens, self.bench_rounds = new_tokens, bench_tokens, bench_rounds
        self.steps: list[dict[str, Any]] = []
        self.loaded = None

    def step(self, name: str, fn: Callable[[], dict[str, Any]], needs: tuple[str, ...] = ()) -> None:
        failed = [s["name"] for s in self.steps if s["name"] in needs and not s["ok"]]
        record: dict[str, Any] = {"name": name, "ok": False, "seconds": 0.0}
        if failed:
            record["error"] = f"skipped: {', '.join(failed)} failed"
            self.steps.append(record)
            return
        start = time.perf_counter()
        try:
            record["details"] = fn()
            record["ok"] = True
        except Exception as err:  # every failure is reported, not raised: the report is the product
            record["error"] = f"{type(err).__name__}: {err}"
            record["traceback"] = traceback.format_exc(limit=8)
        record["seconds"] = round(time.perf_counter() - start, 4)
        self.steps.append(record)

    # ------------------------------------------------------------------ steps

    def check_device(self) -> dict[str, Any]:
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise StepFailed(f"CUDA is not available here (torch {torch.__version__}, built for CUDA {torch.version.cuda})")
        return device_info(self.device)

    def load(self) -> dict[str, Any]:
        from alignx_demo.modeling import load_mocae
        from alignx_demo.serving import quiet_bitsandbytes

        quiet_bitsandbytes()
        before = rss_bytes()
        self.loaded = load_mocae(self.model, load_in_4bit=self.load_in_4bit, device=self.device.type,
                                 trust_remote_code=self.trust_remote_code, base_model=self.base_model)
        details = {"description": self.loaded.description, "quantized": self.loaded.quantized,
                   "notices": list(self.loaded.notices), "layers": self.loaded.mocae.n_layers,
                   "parameters": self.loaded.mocae.count_parameters(), "rss_bytes_added": _minus(rss_bytes(), before)}
        if self.device.type == "cuda":
            details["cuda_allocated_bytes"] = torch.cuda.memory_allocated(self.device)
        if self.load_in_4bit and not self.loaded.quantized:
            raise StepFailed("4-bit NF4 was asked for but the base loaded in full precision: " + "; ".join(self.loaded.notices))
        return details

    def placement(self) -> dict[str, Any]:
        from alignx_demo.generation import input_device
        from alignx_demo.modeling.layer import expert_dtype, module_device

        mocae = self.loaded.mocae
        problems = []
        for name, module in mocae.expert_modules.items():
            device = module_device(module.base)
            want = expert_dtype(module.base, device)
            for part in (module.lora_A, module.lora_B):
                if part.device != device or part.dtype != want:
                    problems.append(f"{name}: expert on {part.device}/{part.dtype}, base on {device} (want {want})")
        layers = [module_device(layer) for layer in _layers(mocae)]
        for index, (router, device) in enumerate(zip(mocae.routers, layers)):
            if router.proj.weight.device != device:
                problems.append(f"router {index} on {router.proj.weight.device}, its layer on {device}")
        first = input_device(mocae.model)
        if mocae.calibration is not None and any(b.device != first for b in mocae.calibration.buffers()):
            problems.append(f"calibration not on the input device {first}")
        if any(d.type != self.device.type for d in layers):
            problems.append(f"layers on {sorted({str(d) for d in layers})}, asked for {self.device.type}")
        if problems:
            raise StepFailed(f"{len(problems)} misplaced tensor(s), first: {problems[0]}")
        return {"layer_devices": sorted({str(d) for d in layers}),
                "expert_dtypes": sorted({str(p.dtype) for p in mocae.expert_parameters()}),
                "router_dtype": str(mocae.routers[0].proj.weight.dtype),
                "experts": len(mocae.expert_modules)}

    def generate(self, mode: str) -> dict[str, Any]:
        from alignx_demo.config import GenerationSettings, RoutingSettings
        from alignx_demo.generation import RoutedGeneration

        mocae, tokenizer = self.loaded.mocae, self.loaded.tokenizer
        routing = RoutingSettings(mode=mode, calibrated=True)
        settings = GenerationSettings(max_new_tokens=self.new_tokens, do_sample=True, temperature=0.8, top_p=0.9, seed=1234)

        def run() -> tuple[dict[str, Any], float, float]:
            start, first = time.perf_counter(), None
            generation = RoutedGeneration(mocae, tokenizer, PROMPT, settings, routing, model_name=self.loaded.description)
            for token in generation:
                if not token.is_prompt and first is None:
                    first = time.perf_counter() - start
            return generation.trace(), first or 0.0, time.perf_counter() - start

        trace, first, seconds = run()
        again, _, _ = run()
        json.dumps(trace)  # plain data, as the app and `generate --json` hand it on
        generated = [t for t in trace["tokens"] if not t["is_prompt"]]
        if not generated:
            raise StepFailed("no token was generated")
        for t in trace["tokens"]:
            for row in t["layers"]:
                if not all(math.isfinite(v) and -1e-6 <= v <= 1 + 1e-6 for v in row) or abs(sum(row) - 1) > 1e-3:
                    raise StepFailed(f"token {t['position']} has routing weights {row} (not finite, or not summing to 1)")
                if mode == "top1" and sorted(row) != [0.0, 0.0, 1.0]:
                    raise StepFailed(f"top-1 token {t['position']} has weights {row}, not one-hot")
        if [t["id"] for t in again["tokens"]] != [t["id"] for t in trace["tokens"]]:
            raise StepFailed("the same seed drew different tokens on a second run")
        worst, tolerance = self._recompute_gap(trace, routing), self._recompute_tolerance()
        if worst > tolerance:
            raise StepFailed(f"streamed routing differs from a full recompute by {worst:.2e} (tolerance {tolerance:g})")
        return {"settings": trace["settings"], "generated_tokens": len(generated), "finish_reason": trace["finish_reason"],
                "text": trace["text"][:200], "first_token_seconds": round(first, 4), "seconds": round(seconds, 4),
                "tokens_per_second": round(len(generated) / max(seconds - first, 1e-9), 2) if len(generated) > 1 else None,
                "recompute_max_abs_diff": worst, "recompute_tolerance": tolerance, "mean_weights": _mean_weights(generated)}

    def _recompute_tolerance(self) -> float:
        """How far streamed and recomputed weights may differ: a cached fp32 forward agrees with an uncached one to
        ~1e-6 (the bundled model, calibrated: 2e-5), so 1e-4 still catches a router context carried wrongly; 4-bit
        kernels differ between one token and a whole sequence (the bundled model: 6e-4), half precision more."""
        if any(p.dtype != torch.float32 for p in self.loaded.mocae.expert_parameters()):
            return 2e-2
        return 5e-3 if self.loaded.quantized else 1e-4

    def _recompute_gap(self, trace: dict[str, Any], routing) -> float:
        """Largest difference between the streamed weights and those of one uncached forward of the whole sequence
        (a generated token carries the routing of the position before it)."""
        from alignx_demo.generation import input_device

        mocae = self.loaded.mocae
        ids = torch.tensor([[t["id"] for t in trace["tokens"]]], device=input_device(mocae.model))
        span = torch.tensor([[int(t["is_prompt"]) for t in trace["tokens"]]], device=ids.device)
        with mocae.lock, torch.no_grad(), mocae.routed(routing), mocae.prompt_span(span), mocae.record() as record:
            mocae(input_ids=ids)
        full = record.stacked_weights()[:, 0].float().cpu()  # (L, T, K)
        if routing.mode == "top1":  # near-ties may flip between two kernels; compare the soft weights' argmax agreement instead
            return 0.0 if _top1_agrees(trace, full) else 1.0
        gap = 0.0
        for t in trace["tokens"]:
            source = t["position"] if t["is_prompt"] else t["position"] - 1
            gap = max(gap, float((torch.tensor(t["layers"]) - full[:, source]).abs().max()))
        return gap

    def bench(self) -> dict[str, Any]:
        from alignx_demo.config import RoutingSettings
        from alignx_demo.evaluation.efficiency import decode_latency
        from alignx_demo.generation import input_device

        mocae = self.loaded.mocae
        device = input_device(mocae.model)
        vocab = int(mocae.model.config.vocab_size)
        prompt_len = min(32, max(4, int(getattr(mocae.model.config, "max_position_embeddings", 64)) // 4))

        systems = {  # each system's whole decode runs inside its context: nothing but the forwards is timed
            "base": mocae.base_only,
            "mocae_soft": lambda: mocae.routed(RoutingSettings(mode="soft", calibrated=True)),
            "mocae_top1": lambda: mocae.routed(RoutingSettings(mode="top1", calibrated=True)),
            "mocae_soft_uncalibrated": lambda: mocae.routed(RoutingSettings(mode="soft", calibrated=False)),  # calibration's cost
        }
        cpu = device.type != "cuda"
        times: dict[str, list[float]] = {name: [] for name in systems}
        peaks: dict[str, int] = dict.fromkeys(systems, 0)
        rss_before = rss_bytes()
        with mocae.lock:
            for context in systems.values():
                with context():
                    decode_latency(mocae.model, vocab, device, 1, prompt_len, 2)  # warm-up
            for _ in range(self.bench_rounds):
                for name, context in systems.items():
                    with context():
                        step, _, peak = decode_latency(mocae.model, vocab, device, 1, prompt_len, self.bench_tokens)
                    times[name].append(step)
                    peaks[name] = max(peaks[name], peak)
            if cpu:  # Python's allocations, traced after the timing: tracing slows every allocation
                tracemalloc.start()
                for context in systems.values():
                    with context():
                        decode_latency(mocae.model, vocab, device, 1, prompt_len, 2)
        details: dict[str, Any] = {"batch": 1, "prompt_len": prompt_len, "new_tokens": self.bench_tokens, "rounds": self.bench_rounds,
                                   "timer": "CUDA events" if not cpu else "wall clock",
                                   "decode_ms": {n: round(1000 * min(v), 4) for n, v in times.items()}}
        base_ms = details["decode_ms"]["base"]
        details["ratios"] = {f"{n}_vs_base": round(ms / base_ms, 4) for n, ms in details["decode_ms"].items() if n != "base"}
        details["soft_within_1_15_of_base"] = details["ratios"]["mocae_soft_vs_base"] <= 1.15
        if cpu:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            details |= {"tracemalloc_peak_bytes": peak, "rss_bytes": rss_bytes(), "rss_bytes_added": _minus(rss_bytes(), rss_before)}
        else:
            details["cuda_peak_bytes"] = peaks
        return details

    # ------------------------------------------------------------------ run

    def run(self) -> dict[str, Any]:
        started = time.time()
        self.step("device", self.check_device)
        self.step("load", self.load, needs=("device",))
        self.step("placement", self.placement, needs=("load",))
        self.step("generate_soft_calibrated", lambda: self.generate("soft"), needs=("load",))
        self.step("generate_top1", lambda: self.generate("top1"), needs=("load",))
        self.step("bench", self.bench, needs=("load",))
        return {
            "schema": SCHEMA,
            "ok": all(s["ok"] for s in self.steps),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "seconds": round(time.time() - started, 3),
            "model": str(self.model), "base_model": self.base_model, "load_in_4bit": self.load_in_4bit,
            "versions": versions(),
            "device": {"requested": str(self.device)} | _safe(device_info, self.device),
            "steps": self.steps,
        }


def run_doctor(model: str | Path, device: str | None = None, **options: Any) -> dict[str, Any]:
    """The doctor's report (plain data) for `model` on `device` (default: cuda when present); `options`
    as `Doctor` takes them. Callable from a `spaces.GPU` function on ZeroGPU, where CUDA exists only there."""
    return Doctor(Path(model), device or ("cuda" if torch.cuda.is_available() else "cpu"), **options).run()


def _layers(mocae) -> list[torch.nn.Module]:
    from alignx_demo.modeling.families import decoder_layers

    return list(decoder_layers(mocae.model)[1])


def _minus(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a - b


def _safe(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    try:
        return fn(*args)
    except Exception as err:  # the device description must never stop the report
        return {"error": f"{type(err).__name__}: {err}"}


def _mean_weights(tokens: list[dict[str, Any]]) -> dict[str, float]:
    axes = list(tokens[0]["weights"])
    return {a: round(sum(t["weights"][a] for t in tokens) / len(tokens), 4) for a in axes}


def _top1_agrees(trace: dict[str, Any], full: torch.Tensor) -> bool:
    """Top-1 weights are one-hot: the streamed and recomputed experts agree at (nearly) every position and layer."""
    total = agree = 0
    for t in trace["tokens"]:
        source = t["position"] if t["is_prompt"] else t["position"] - 1
        streamed = torch.tensor(t["layers"]).argmax(-1)
        agree += int((streamed == full[:, source].argmax(-1)).sum())
        total += streamed.numel()
    return agree >= 0.95 * total


def summary_lines(report: dict[str, Any]) -> list[str]:
    device = report["device"]
    lines = [f"alignx doctor: {'all steps passed' if report['ok'] else 'SOME STEPS FAILED'} on "
             f"{device.get('name') or device.get('cpu') or device['requested']} ({report['seconds']:.1f} s)"]
    for s in report["steps"]:
        lines.append(f"  {'ok  ' if s['ok'] else 'FAIL'} {s['name']:<26} {s['seconds']:8.2f} s" + ("" if s["ok"] else f"  {s['error']}"))
    bench = next((s.get("details") for s in report["steps"] if s["name"] == "bench" and s["ok"]), None)
    if bench:
        lines.append("  decode ms/token (batch 1): " + ", ".join(f"{k} {v:g}" for k, v in bench["decode_ms"].items()))
    return lines


def register(sub, default_model: Path) -> None:
    """Add the `doctor` command to the CLI's subparsers."""
    p = sub.add_parser("doctor", help="check a checkpoint end to end on a device (4-bit load, generation, bench) and write what it saw")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda when present, else cpu")
    p.add_argument("--model", type=Path, default=default_model, help="MoCaE checkpoint folder (default: the bundled demo model)")
    p.add_argument("--base-model", default=None, help="load the base from this hub id or path instead of MODEL/base")
    p.add_argument("--no-4bit", action="store_true", help="load the base in full precision instead of 4-bit NF4")
    p.add_argument("--new-tokens", type=int, default=16, help="tokens per check generation (default 16)")
    p.add_argument("--bench-tokens", type=int, default=16, help="decode steps per bench round (default 16)")
    p.add_argument("--bench-rounds", type=int, default=3)
    p.add_argument("--trust-remote-code", action="store_true", help="allow a base model's own code (off by default)")
    p.add_argument("--out", type=Path, required=True, help="write the JSON report here")
    p.set_defaults(func=_run)


def _run(args) -> int:
    for name in ("new_tokens", "bench_tokens", "bench_rounds"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    report = run_doctor(args.model, args.device, base_model=args.base_model, load_in_4bit=not args.no_4bit,
                        new_tokens=args.new_tokens, bench_tokens=args.bench_tokens, bench_rounds=args.bench_rounds,
                        trust_remote_code=args.trust_remote_code)
    report["command"] = "python -m alignx_demo " + " ".join(sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print("\n".join(summary_lines(report)))
    print(f"report: {args.out}")
    return 0 if report["ok"] else 1
