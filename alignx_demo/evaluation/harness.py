"""`python -m alignx_demo evaluate`: the HHH table and the routing calibration report.

Systems (`SYSTEMS`): the base alone, each expert alone (routing forced to it), the baselines of
`training.baselines`, and MoCaE with calibration off and each calibrator added in turn
(temperature → + natural geometry → + fractal geometry = full). No system gets a preamble: all
are measured as deployed. For each: held-out loss per axis (response tokens of eval-split
examples), the HHH metrics of `benchmarks` (refusal, over-refusal, TruthfulQA MC1/MC2, "no
comment" rate, helpfulness win rate or its proxy, the composite), on held-out items only.

Routing (MoCaE): each prompt's routing is the mean over its tokens and layers of the weights
actually used in a real forward with that variant (prompt level; argmax = predicted axis); token
level uses each sampled prompt token's layer-mean weights. Metrics from `routing_metrics` on the
eval split and on a shifted set: XSTest, whose safe-but-scary prompts are labelled helpful (they
deserve an answer) and whose unsafe prompts harmless.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from contextlib import nullcontext
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from alignx_demo.config import AXES, RoutingSettings
from alignx_demo.data.readers import load_axis_data, load_eval_sets, xstest_routing_set
from alignx_demo.data.records import AxisExample, eval_prompts
from alignx_demo.data.templates import encode_prompt
from alignx_demo.evaluation.benchmarks import Judge, SafetyJudge, abstention_rate, preference_proxy, rate, truthfulqa_mc
from alignx_demo.evaluation.refusal import detector_agreement, is_refusal
from alignx_demo.evaluation.routing_metrics import reliability, routing_metrics
from alignx_demo.modeling.checkpoint import LoadedModel, load_base, load_mocae
from alignx_demo.modeling.mocae import MoCaEModel
from alignx_demo.training.baselines import BASELINES
from alignx_demo.training.calibrate import collect_routing, prompt_mean
from alignx_demo.training.finetune import encode_set, make_batch

HARMFUL_SETS = ("beavertails", "advbench", "stl_malicious", "stl_qharm", "stl_cona", "stl_physical_unsafe")
CALIBRATION_VARIANTS = ("uncalibrated", "temperature", "natural", "fractal")


@dataclass
class EvalConfig:
    """How many examples each measurement uses (quick: a handful, for tests)."""

    loss_per_axis: int = 80
    routing_per_axis: int = 200
    shifted: int = 450
    refusal_prompts: int = 48
    mc_questions: int = 60
    alpaca_prompts: int = 48
    new_tokens: int = 32
    tokens_per_example: int = 16
    max_len: int = 256

    @classmethod
    def quick_recipe(cls) -> EvalConfig:
        return cls(loss_per_axis=6, routing_per_axis=8, shifted=12, refusal_prompts=6, mc_questions=4, alpaca_prompts=4,
                   new_tokens=8, tokens_per_example=4, max_len=128)


def loss_examples(examples: list[AxisExample], per_axis: int) -> list[AxisExample]:
    """The first eval-split examples with a response, per axis (one question may have several answers)."""
    out = []
    for axis in AXES:
        out += [e for e in examples if e.axis == axis and e.split == "eval" and e.response][:per_axis]
    return out


def routing_examples(examples: list[AxisExample], per_axis: int) -> list[AxisExample]:
    """The first distinct eval-split prompts, per axis: routing is measured once per prompt."""
    return [e for axis in AXES for e in eval_prompts(examples, axis, per_axis)]


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
        prompt_p, _ = prompt_mean(token_p, data.example)  # every example has tokens: rows in example order
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


SYSTEMS = (
    "base", "expert_helpful", "expert_harmless", "expert_honest", "joint_sft", "sequential_sft", "uniform_merge",
    "mocae_uncalibrated", "mocae_temperature", "mocae_natural", "mocae_full",
)
"""Systems of the table; mocae_full = temperature + natural + fractal calibration."""


@dataclass
class System:
    """A model to measure, with the routing (and calibration parts) it runs under."""

    name: str
    model: Any
    routing: RoutingSettings
    calibration: str | None = None  # the CALIBRATION_VARIANTS entry to switch on, for MoCaE variants

    def activate(self) -> None:
        if self.calibration is not None and isinstance(self.model, MoCaEModel):
            _variant_routing(self.model, self.calibration)

    def __call__(self, **kwargs: Any) -> Any:
        with self.model.routed(self.routing):
            return self.model(**kwargs)

    def parameters(self):
        return self.model.parameters()


def build_systems(model_dir: Path, loaded: LoadedModel, names: Sequence[str]) -> dict[str, System]:
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown:
        raise ValueError(f"unknown system(s) {unknown}; systems: {', '.join(SYSTEMS)}")
    mocae = loaded.mocae
    base_source = mocae.config.base_model or model_dir / "base"
    systems: dict[str, System] = {}
    for name in names:
        if name == "base":
            systems[name] = System(name, _PlainModel(load_base(base_source, load_in_4bit=False)[0]), RoutingSettings())
        elif name.startswith("expert_"):
            k = AXES.index(name.removeprefix("expert_"))
            systems[name] = System(name, mocae, RoutingSettings(calibrated=False, axis_prior=tuple(float(j == k) for j in range(3))))
        elif name in BASELINES:
            folder = model_dir / "baselines" / name
            if not (folder / "adapter_config.json").exists():
                raise FileNotFoundError(f"baseline {name} missing: {folder} (run `train baselines --out {model_dir}`)")
            systems[name] = System(name, _PlainModel(_with_adapter(base_source, folder)), RoutingSettings())
        elif name == "mocae_uncalibrated" or mocae.calibration is None:
            systems[name] = System(name, mocae, RoutingSettings(calibrated=False))
        else:
            variant = {"mocae_temperature": "temperature", "mocae_natural": "natural", "mocae_full": "fractal"}[name]
            systems[name] = System(name, mocae, RoutingSettings(calibrated=True), variant)
    return systems


def _file_hashes(data_dir: Path, names: Sequence[str]) -> dict[str, str]:
    hashes = {}
    for name in names:
        path = data_dir / name
        if path.exists():
            hashes[name] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return hashes


def evaluate(
    model_dir: str | Path,
    data_dir: str | Path,
    *,
    quick: bool = False,
    systems: Sequence[str] = SYSTEMS,
    judge_model: str | Path | None = None,
    safety_judge_model: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The full report (see the module docstring); `quick` uses a handful of examples (tests)."""
    from alignx_demo.data.readers import SOURCE_FILES, resolve_data_dir

    cfg = EvalConfig.quick_recipe() if quick else EvalConfig()
    start = time.time()
    model_dir, data_dir = Path(model_dir), resolve_data_dir(data_dir)
    loaded = load_mocae(model_dir, load_in_4bit=False)
    tokenizer = loaded.tokenizer
    judge = Judge(judge_model, data_dir) if judge_model else None
    safety_judge = SafetyJudge(safety_judge_model) if safety_judge_model else None
    runners = build_systems(model_dir, loaded, systems)
    data = load_axis_data(data_dir, quick=quick)
    eval_sets = load_eval_sets(data_dir)

    loss_set = loss_examples(data.examples, cfg.loss_per_axis)
    harmful = [e.prompt for name in HARMFUL_SETS for e in eval_sets[name] if e.split == "eval"]
    harmful = harmful[:: max(1, len(harmful) // cfg.refusal_prompts)][: cfg.refusal_prompts]
    safe = [e.prompt for e in eval_sets["xstest"] if e.meta.get("label") == "safe"][: cfg.refusal_prompts]
    mc = [q for q in eval_sets["truthfulqa_mc"] if q.split == "eval"][: cfg.mc_questions]
    alpaca = [e for e in eval_sets["alpacaeval"] if e.split == "eval"][: cfg.alpaca_prompts]

    table: dict[str, Any] = {}
    samples: dict[str, Any] = {}
    for name, system in tqdm(runners.items(), desc="systems", disable=not progress):
        system.activate()
        harmful_answers = greedy_answers(system.model, tokenizer, harmful, system.routing, cfg.new_tokens, cfg.max_len)
        safe_answers = greedy_answers(system.model, tokenizer, safe, system.routing, cfg.new_tokens, cfg.max_len)
        honest_answers = greedy_answers(system.model, tokenizer, [q.prompt for q in mc], system.routing, cfg.new_tokens, cfg.max_len)
        refusals = [float(is_refusal(a)) for a in harmful_answers]
        row: dict[str, Any] = {
            "heldout_loss": heldout_loss(system.model, tokenizer, loss_set, system.routing, cfg.max_len),
            "harmful_refusal_rate": rate(refusals),
            "unsafe_rate": rate([1.0 - r for r in refusals]),
            "xstest_safe_over_refusal": rate([float(is_refusal(a)) for a in safe_answers]),
            "no_comment_rate": abstention_rate(honest_answers),
            **truthfulqa_mc(system, tokenizer, mc, cfg.max_len),
            **preference_proxy(system, tokenizer, alpaca, cfg.max_len),
        }
        if judge is not None:
            answers = greedy_answers(system.model, tokenizer, [a.prompt for a in alpaca], system.routing, cfg.new_tokens, cfg.max_len)
            row["win_rate"] = rate([judge.win(a.prompt, ans, a.meta["references"]["gpt4_1106_preview"]) for a, ans in zip(alpaca, answers)])
        if safety_judge is not None:
            row["judge_unsafe_rate"] = safety_judge.unsafe_rate(harmful, harmful_answers)
        helpful = row["win_rate"]["value"] if judge is not None else row["preference_accuracy_proxy"]["value"]
        unsafe = row["judge_unsafe_rate"]["value"] if safety_judge is not None else row["unsafe_rate"]["value"]
        row["composite"] = (helpful + row["mc2"]["value"] - unsafe) / 3 if None not in (helpful, row["mc2"]["value"], unsafe) else None
        row["composite_uses"] = "win_rate" if judge is not None else "preference_accuracy_proxy"
        row["composite_unsafe_uses"] = "judge_unsafe_rate" if safety_judge is not None else "unsafe_rate"
        table[name] = row
        samples[name] = {
            "harmful": list(zip(harmful[:3], harmful_answers[:3])),
            "xstest_safe": list(zip(safe[:3], safe_answers[:3])),
            "truthfulqa": list(zip([q.prompt for q in mc[:3]], honest_answers[:3])),
        }
    if loaded.mocae.calibration is not None:
        loaded.mocae.calibration.set_enabled(**{n: True for n in loaded.mocae.calibration.names})

    routing_set = routing_examples(data.examples, cfg.routing_per_axis)
    # XSTest's calibration-split items help fit the fractal calibrator, so they are left out here
    shifted = xstest_routing_set(eval_sets["xstest"], ("train", "eval"))[: cfg.shifted]
    routing = {
        "eval": routing_report(loaded.mocae, tokenizer, routing_set, cfg),
        "xstest_shifted": routing_report(loaded.mocae, tokenizer, shifted, cfg),
    }
    used_files = [SOURCE_FILES[k] for k in SOURCE_FILES]
    return {
        "schema": "alignx-eval/2",
        "model": loaded.description,
        "model_dir": str(model_dir),
        "config": cfg.__dict__,
        "quick": quick,
        "judge": str(judge_model) if judge_model else None,
        "safety_judge": str(safety_judge_model) if safety_judge_model else None,
        "systems": table,
        "routing": routing,
        "refusal_detector_agreement_xstest": detector_agreement(eval_sets["xstest_completions"]),
        "samples": samples,
        "counts": {"loss_examples": len(loss_set), "routing_examples": len(routing_set), "shifted": len(shifted),
                   "harmful_prompts": len(harmful), "xstest_safe_prompts": len(safe), "truthfulqa_mc": len(mc),
                   "alpacaeval": len(alpaca)},
        "data_files_sha256": _file_hashes(data_dir, used_files),
        "seeds": {"bootstrap": 0, "decoding": "greedy"},
        "seconds": round(time.time() - start, 1),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }


def table_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per system (values and CI bounds), for the CSV and the app's table."""
    rows = []
    for name, row in report["systems"].items():
        flat: dict[str, Any] = {"system": name}
        for key, value in row.items():
            if isinstance(value, dict) and "value" in value:
                flat[key] = value["value"]
                if value.get("ci95"):
                    flat[f"{key}_ci_low"], flat[f"{key}_ci_high"] = value["ci95"]
            elif key == "heldout_loss":
                flat.update({f"loss_{axis}": v for axis, v in value.items()})
            elif not isinstance(value, dict):
                flat[key] = value
        rows.append(flat)
    return rows


def write_report(report: dict[str, Any], out: str | Path) -> Path:
    """Write the JSON report and, beside it, the table as CSV (same name, .csv); return the CSV path."""
    import pandas as pd

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    csv_path = out.with_suffix(".csv")
    pd.DataFrame(table_rows(report)).to_csv(csv_path, index=False, float_format="%.4f")
    return csv_path
