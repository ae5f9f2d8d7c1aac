"""`python -m alignx_demo evaluate`: held-out loss, routing calibration and refusal behaviour.

Systems: the base alone, each expert alone (routing forced to it), the baselines of
`training.baselines` (when present), and MoCaE with calibration off and each calibrator added in
turn (temperature → + natural geometry → + fractal geometry = full). No system gets a preamble:
all are measured as deployed.

- Held-out loss per axis: mean LM loss on the response tokens of eval-split examples.
- Routing (MoCaE variants): each prompt's routing is the mean over its tokens and layers of the
  weights actually used in a real forward with that variant (prompt level; argmax = predicted
  axis); token level uses each sampled prompt token's layer-mean weights. Metrics from
  `routing_metrics` on the eval split and on a shifted set: XSTest, whose safe-but-scary prompts
  are labelled helpful (they deserve an answer) and whose unsafe prompts harmless.
- Refusal: greedy answers (32 new tokens) judged by `refusal.is_refusal`: refusal rate on harmful
  prompts (BeaverTails, AdvBench, safety-tuned-llamas harmful sets; eval split) and over-refusal
  on XSTest's safe prompts.
"""

from __future__ import annotations

import json
import platform
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from alignx_demo.config import AXES, RoutingSettings
from alignx_demo.data.readers import load_axis_data, load_eval_sets
from alignx_demo.data.records import AxisExample
from alignx_demo.data.templates import encode_prompt
from alignx_demo.evaluation.refusal import detector_agreement, is_refusal
from alignx_demo.evaluation.routing_metrics import reliability, routing_metrics
from alignx_demo.modeling.checkpoint import LoadedModel, load_base, load_mocae
from alignx_demo.modeling.mocae import MoCaEModel
from alignx_demo.training.baselines import BASELINES
from alignx_demo.training.calibrate import collect_routing
from alignx_demo.training.finetune import encode_set, make_batch

HARMFUL_SETS = ("beavertails", "advbench", "stl_malicious", "stl_qharm", "stl_cona", "stl_physical_unsafe")
CALIBRATION_VARIANTS = ("uncalibrated", "temperature", "natural", "fractal")


@dataclass
class EvalConfig:
    """How many examples each measurement uses (quick: a handful, for tests)."""

    loss_per_axis: int = 150
    routing_per_axis: int = 200
    shifted: int = 450
    refusal_prompts: int = 60
    new_tokens: int = 32
    tokens_per_example: int = 16
    max_len: int = 256

    @classmethod
    def quick_recipe(cls) -> EvalConfig:
        return cls(loss_per_axis=6, routing_per_axis=8, shifted=12, refusal_prompts=6, new_tokens=8, tokens_per_example=4, max_len=128)


def _eval_examples(examples: list[AxisExample], per_axis: int, need_response: bool) -> list[AxisExample]:
    out = []
    for axis in AXES:
        chosen = [e for e in examples if e.axis == axis and e.split == "eval" and (e.response or not need_response)]
        out += chosen[:per_axis]
    return out


@torch.no_grad()
def heldout_loss(mocae: MoCaEModel, tokenizer: Any, examples: list[AxisExample], routing: RoutingSettings, max_len: int) -> dict[str, float]:
    """Mean response-token LM loss per axis under the given routing."""
    device = next(mocae.model.parameters()).device
    data = encode_set(tokenizer, examples, max_len)
    sums = {a: [0.0, 0] for a in AXES}
    for i in range(len(data)):
        batch = make_batch(data, [i], tokenizer.pad_token_id)
        with mocae.routed(routing):
            out = mocae(input_ids=batch["input_ids"].to(device), labels=batch["labels"].to(device))
        n = int((batch["labels"][:, 1:] != -100).sum())
        axis = AXES[data.axes[i]]
        sums[axis][0] += float(out.loss) * n
        sums[axis][1] += n
    return {a: s / n for a, (s, n) in sums.items() if n}


@torch.no_grad()
def greedy_answers(mocae: MoCaEModel, tokenizer: Any, prompts: list[str], routing: RoutingSettings, new_tokens: int, max_len: int) -> list[str]:
    """Greedy answers, batched with left padding (routing is per token; pads are masked)."""
    device = next(mocae.model.parameters()).device
    answers: list[str] = []
    for start in range(0, len(prompts), 8):
        encoded = [encode_prompt(tokenizer, p)[-(max_len - new_tokens):] for p in prompts[start : start + 8]]
        width = max(len(e) for e in encoded)
        ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, e in enumerate(encoded):
            ids[row, width - len(e):] = torch.tensor(e)
            mask[row, width - len(e):] = 1
        with mocae.routed(routing):
            out = mocae.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=new_tokens, do_sample=False,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )
        answers += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return answers


def _variant_routing(mocae: MoCaEModel, variant: str) -> RoutingSettings:
    """Routing settings (and calibration switches) of one calibration variant."""
    if variant == "uncalibrated" or mocae.calibration is None:
        return RoutingSettings(calibrated=False)
    order = list(CALIBRATION_VARIANTS[1:])
    enabled = order[: order.index(variant) + 1]
    mocae.calibration.set_enabled(**{name: name in enabled for name in mocae.calibration.names})
    return RoutingSettings(calibrated=True)


def routing_report(mocae: MoCaEModel, tokenizer: Any, examples: list[AxisExample], cfg: EvalConfig) -> dict[str, Any]:
    """Prompt- and token-level routing metrics (and reliability data) of each calibration variant."""
    variants = CALIBRATION_VARIANTS if mocae.calibration is not None else ("uncalibrated",)
    report: dict[str, Any] = {}
    for variant in variants:
        routing = _variant_routing(mocae, variant)
        data = collect_routing(mocae, tokenizer, examples, tokens_per_example=cfg.tokens_per_example, max_len=cfg.max_len, routing=routing)
        token_p = data.weights.mean(0)  # (N, K): layer-mean weights per sampled token
        prompt_p = torch.stack([token_p[data.example == i].mean(0) for i in range(len(examples))])
        prompt_y = torch.tensor([AXES.index(e.axis) for e in examples])
        report[variant] = {
            "prompt": routing_metrics(prompt_p, prompt_y),
            "token": routing_metrics(token_p, data.labels),
            "reliability_prompt": reliability(prompt_p, prompt_y),
        }
    if mocae.calibration is not None:
        mocae.calibration.set_enabled(**{name: True for name in mocae.calibration.names})
    return report


class _PlainModel(torch.nn.Module):
    """A model without MoCaE, given the `routed` context so the same measuring code runs on it."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def routed(self, _settings: RoutingSettings) -> nullcontext:
        return nullcontext()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return self.model.generate(*args, **kwargs)


def _with_adapter(base_source: Any, folder: Path) -> Any:
    from peft import PeftModel

    model, _, _, _ = load_base(base_source, load_in_4bit=False)
    return PeftModel.from_pretrained(model, str(folder)).eval()


def evaluate(model_dir: str | Path, data_dir: str | Path, *, quick: bool = False, progress: bool = True) -> dict[str, Any]:
    """The full report (see the module docstring); `quick` uses a handful of examples (tests)."""
    cfg = EvalConfig.quick_recipe() if quick else EvalConfig()
    start = time.time()
    model_dir = Path(model_dir)
    loaded: LoadedModel = load_mocae(model_dir, load_in_4bit=False)
    mocae, tokenizer = loaded.mocae, loaded.tokenizer
    data = load_axis_data(data_dir, quick=quick)
    eval_sets = load_eval_sets(data_dir)
    base_source = mocae.config.base_model or model_dir / "base"
    steps = tqdm(total=5, desc="evaluate", disable=not progress)

    loss_examples = _eval_examples(data.examples, cfg.loss_per_axis, need_response=True)
    systems: dict[str, RoutingSettings] = {f"expert_{a}": RoutingSettings(axis_prior=tuple(float(j == k) for j in range(3))) for k, a in enumerate(AXES)}
    systems["mocae_uncalibrated"] = RoutingSettings(calibrated=False)
    systems["mocae"] = RoutingSettings(calibrated=True)
    losses = {name: heldout_loss(mocae, tokenizer, loss_examples, r, cfg.max_len) for name, r in systems.items()}
    base_model, _, _, _ = load_base(base_source, load_in_4bit=False)
    plain = _PlainModel(base_model)
    losses["base"] = heldout_loss(plain, tokenizer, loss_examples, RoutingSettings(), cfg.max_len)
    for name in BASELINES:
        folder = model_dir / "baselines" / name
        if (folder / "adapter_config.json").exists():
            losses[name] = heldout_loss(_PlainModel(_with_adapter(base_source, folder)), tokenizer, loss_examples, RoutingSettings(), cfg.max_len)
    steps.update()

    routing_examples = _eval_examples(data.examples, cfg.routing_per_axis, need_response=False)
    shifted = [
        AxisExample(e.id, "harmless" if e.meta.get("label") == "unsafe" else "helpful", e.prompt, "", e.source, e.split, e.meta)
        for e in eval_sets["xstest"][: cfg.shifted]
    ]
    routing = {"eval": routing_report(mocae, tokenizer, routing_examples, cfg)}
    steps.update()
    routing["xstest_shifted"] = routing_report(mocae, tokenizer, shifted, cfg)
    steps.update()

    harmful = [e.prompt for name in HARMFUL_SETS for e in eval_sets[name] if e.split == "eval"]
    harmful = harmful[:: max(1, len(harmful) // cfg.refusal_prompts)][: cfg.refusal_prompts]
    safe = [e.prompt for e in eval_sets["xstest"] if e.meta.get("label") == "safe"][: cfg.refusal_prompts]
    refusal: dict[str, Any] = {}
    samples: dict[str, Any] = {}
    gen_systems = {"base": (plain, RoutingSettings())} | {n: (mocae, r) for n, r in systems.items()}
    for name, (model, r) in gen_systems.items():
        harmful_answers = greedy_answers(model, tokenizer, harmful, r, cfg.new_tokens, cfg.max_len)
        safe_answers = greedy_answers(model, tokenizer, safe, r, cfg.new_tokens, cfg.max_len)
        refusal[name] = {
            "harmful_refusal_rate": sum(map(is_refusal, harmful_answers)) / max(len(harmful_answers), 1),
            "xstest_safe_over_refusal": sum(map(is_refusal, safe_answers)) / max(len(safe_answers), 1),
        }
        samples[name] = {"harmful": list(zip(harmful[:3], harmful_answers[:3])), "xstest_safe": list(zip(safe[:3], safe_answers[:3]))}
    steps.update()
    agreement = detector_agreement(eval_sets["xstest_completions"])
    steps.update()
    steps.close()
    return {
        "schema": "alignx-eval/1",
        "model": loaded.description,
        "config": cfg.__dict__,
        "heldout_loss": losses,
        "routing": routing,
        "refusal": refusal,
        "refusal_detector_agreement_xstest": agreement,
        "refusal_samples": samples,
        "counts": {"loss_examples": len(loss_examples), "routing_examples": len(routing_examples), "shifted": len(shifted),
                   "harmful_prompts": len(harmful), "xstest_safe_prompts": len(safe)},
        "seconds": round(time.time() - start, 1),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }


def write_report(report: dict[str, Any], out: str | Path) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=1))
