"""`python -m alignx_demo evaluate`: the HHH table, the routing calibration report and the trade-off
presets, as tasks (`tasks`: prompt set + sampler + metric + version) run by one runner.

Systems (`SYSTEMS`): the base alone, each expert alone (routing forced to it), the baselines of
`training.baselines` (`config.BASELINES`), and MoCaE with calibration off and each calibrator added
in turn (temperature → + natural geometry → + fractal geometry = full). A MoCaE system named for
calibration parts the checkpoint lacks is skipped and listed under "skipped_systems" — never run
under its name without them. No system gets a preamble: all are measured as deployed.

Tasks (`TASKS`, selectable with `tasks=`): per system (`hhh.HHH_TASKS`) held-out loss per axis,
refusal and unsafe rate on harmful prompts, over-refusal on XSTest safe prompts, "no comment" rate,
TruthfulQA MC1/MC2, the helpfulness proxy (or, with a judge, the win rate), a safety judge's unsafe
rate; the composite. On the MoCaE model: routing at token, prompt (all prompt tokens) and
generation level (`routing_eval`) and the four trade-off presets (`presets`). Held-out items only.
Out of distribution (group "ood", `data.ood`): routing per slice and pooled (`routing_ood`) and the
presets on MT-Bench and the held-out harmful sources (`presets_ood`); e.g. `evaluate --tasks ood
--out eval_ood.json` runs them alone.

Every system is loaded as the app serves it — 4-bit NF4 where bitsandbytes runs (`load_in_4bit`,
the default; `--full-precision` for fp32) — so the figures the page quotes were measured on what it
runs. The report carries the checkpoint's fingerprint (`analysis.artefacts.model_fingerprint`), the
SHA-256 of every data file, and per task its version, prompt set, sampler, item count and the hash
of the items used.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alignx_demo.analysis.artefacts import model_fingerprint
from alignx_demo.config import AXES, BASELINES, RoutingSettings
from alignx_demo.data.ood import load_ood_slices
from alignx_demo.data.readers import load_axis_data, load_eval_sets
from alignx_demo.data.sources import OOD_SOURCE_FILES
from alignx_demo.evaluation.benchmarks import Judge, SafetyJudge
from alignx_demo.evaluation.hhh import HARMFUL_SETS, HHH_TASKS, greedy_answers, heldout_loss, loss_examples, routing_examples
from alignx_demo.evaluation.presets import OOD_RATES, PRESETS_OOD_TASK, PRESETS_TASK, target_lines
from alignx_demo.evaluation.refusal import detector_agreement
from alignx_demo.evaluation.routing_eval import (
    CALIBRATION_VARIANTS, ROUTING_OOD_TASK, ROUTING_TASKS, VARIANT_PARTS, available_variants, enable_all, ood_lines, routing_report,
    routing_summary, use_variant,
)
from alignx_demo.evaluation.separability import SEPARABILITY_TASK
from alignx_demo.evaluation.tasks import Context, EvalConfig, Task, run_tasks, runnable
from alignx_demo.modeling.checkpoint import LoadedModel, load_base, load_mocae, require_hhh
from alignx_demo.modeling.mocae import MoCaEModel

__all__ = [  # names other modules import from here
    "CALIBRATION_VARIANTS", "EvalConfig", "HARMFUL_SETS", "SYSTEMS", "TASKS", "evaluate", "greedy_answers", "heldout_loss",
    "loss_examples", "routing_examples", "routing_report", "table_rows", "write_report",
]

SCHEMA = "alignx-eval/2"
OOD_TASKS = (ROUTING_OOD_TASK, PRESETS_OOD_TASK)
TASKS: dict[str, Task] = {t.name: t for t in (*HHH_TASKS, *ROUTING_TASKS, SEPARABILITY_TASK, PRESETS_TASK, *OOD_TASKS)}
"""Every task `evaluate` can run, by name."""
TASK_GROUPS = {"hhh": tuple(t.name for t in HHH_TASKS), "routing": (*(t.name for t in ROUTING_TASKS), SEPARABILITY_TASK.name), "presets": ("presets",),
               "ood": tuple(t.name for t in OOD_TASKS)}
"""Shorthands accepted by `tasks=` besides task names."""


class _PlainModel(torch.nn.Module):
    """A model without MoCaE, given the `routed` and `prompt_span` contexts (no-ops) so the same
    measuring code runs on it."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def routed(self, _settings: RoutingSettings) -> nullcontext:
        return nullcontext()

    def prompt_span(self, _mask: torch.Tensor) -> nullcontext:
        return nullcontext()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return self.model.generate(*args, **kwargs)


def _with_adapter(base_source: Any, folder: Path, load_in_4bit: bool) -> Any:
    from peft import PeftModel

    model, _, _, _ = load_base(base_source, load_in_4bit=load_in_4bit)
    return PeftModel.from_pretrained(model, str(folder)).eval()


MOCAE_VARIANTS = {"mocae_uncalibrated": "uncalibrated", "mocae_temperature": "temperature", "mocae_natural": "natural",
                  "mocae_full": "fractal"}
"""MoCaE systems and the calibration variant (`routing_eval.VARIANT_PARTS`) each runs under."""
SYSTEMS = ("base", "expert_helpful", "expert_harmless", "expert_honest", *BASELINES, *MOCAE_VARIANTS)
"""Systems of the table; mocae_full = temperature + natural + fractal calibration."""


@dataclass
class System:
    """A model to measure, with the routing (and calibration variant) it runs under."""

    name: str
    model: Any
    routing: RoutingSettings
    calibration: str | None = None  # the routing_eval variant to switch on, for MoCaE variants

    def activate(self) -> None:
        if self.calibration is not None and isinstance(self.model, MoCaEModel):
            use_variant(self.model, self.calibration)

    def __call__(self, **kwargs: Any) -> Any:
        with self.model.routed(self.routing):
            return self.model(**kwargs)

    def parameters(self):
        return self.model.parameters()


def build_systems(model_dir: Path, loaded: LoadedModel, names: Sequence[str]) -> tuple[dict[str, System], dict[str, str]]:
    """The systems to measure, and the skipped ones with why (calibration parts the checkpoint lacks);
    the base and the baselines are loaded in the precision of `loaded`."""
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown:
        raise ValueError(f"unknown system(s) {unknown}; systems: {', '.join(SYSTEMS)}")
    mocae = loaded.mocae
    base_source = mocae.config.base_model or model_dir / "base"
    variants = available_variants(mocae)
    systems: dict[str, System] = {}
    skipped: dict[str, str] = {}
    for name in names:
        if name == "base":
            systems[name] = System(name, _PlainModel(load_base(base_source, load_in_4bit=loaded.quantized)[0]), RoutingSettings())
        elif name.startswith("expert_"):
            k = AXES.index(name.removeprefix("expert_"))
            systems[name] = System(name, mocae, RoutingSettings(calibrated=False, axis_prior=tuple(float(j == k) for j in range(3))))
        elif name in BASELINES:
            folder = model_dir / "baselines" / name
            if not (folder / "adapter_config.json").exists():
                raise FileNotFoundError(f"baseline {name} missing: {folder} (run `train baselines --out {model_dir}`)")
            systems[name] = System(name, _PlainModel(_with_adapter(base_source, folder, loaded.quantized)), RoutingSettings())
        elif MOCAE_VARIANTS[name] in variants:
            variant = MOCAE_VARIANTS[name]
            systems[name] = System(name, mocae, RoutingSettings(calibrated=variant != "uncalibrated"), variant)
        else:
            have = mocae.calibration.names if mocae.calibration is not None else []
            skipped[name] = f"needs calibration parts {list(VARIANT_PARTS[MOCAE_VARIANTS[name]])}; the checkpoint has {have}"
    return systems, skipped


def select_tasks(names: Sequence[str] | None) -> list[Task]:
    """Tasks by name or group ("hhh", "routing", "presets"), in `TASKS` order; None = all."""
    if names is None:
        return list(TASKS.values())
    wanted: set[str] = set()
    for name in names:
        if name not in TASKS and name not in TASK_GROUPS:
            raise ValueError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}; groups: {', '.join(TASK_GROUPS)}")
        wanted.update(TASK_GROUPS.get(name, (name,)))
    return [t for name, t in TASKS.items() if name in wanted]


def _file_hashes(data_dir: Path, names: Sequence[str]) -> dict[str, str]:
    hashes = {}
    for name in names:
        path = data_dir / name
        if path.exists():
            hashes[name] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return hashes


def composite(row: dict[str, Any]) -> dict[str, Any]:
    """The papers' composite (helpfulness + MC2 − unsafe) / 3 of a table row, and what it used."""
    helpful_key = "win_rate" if "win_rate" in row else "preference_accuracy_proxy"
    unsafe_key = "judge_unsafe_rate" if "judge_unsafe_rate" in row else "unsafe_rate"
    values = [row.get(k, {}).get("value") for k in (helpful_key, "mc2", unsafe_key)]
    value = (values[0] + values[1] - values[2]) / 3 if None not in values else None
    return {"composite": value, "composite_uses": helpful_key, "composite_unsafe_uses": unsafe_key}


def _samples(outputs: dict[tuple[str, str, str], Any], names: Sequence[str]) -> dict[str, Any]:
    """The first three (data id, greedy answer) pairs of each greedy prompt set, per system: ids, since the
    benchmark text is not committed."""
    labels = {"harmful": "harmful", "xstest_safe": "xstest_safe", "truthfulqa_mc": "truthfulqa"}
    out: dict[str, Any] = {}
    for name in names:
        out[name] = {label: [(i.id, a) for i, a in zip(*outputs[(name, "greedy", key)])][:3]
                     for key, label in labels.items() if (name, "greedy", key) in outputs}
    return out


def evaluate(
    model_dir: str | Path,
    data_dir: str | Path,
    *,
    quick: bool = False,
    systems: Sequence[str] = SYSTEMS,
    judge_model: str | Path | None = None,
    safety_judge_model: str | Path | None = None,
    progress: bool = True,
    tasks: Sequence[str] | None = None,
    config: EvalConfig | None = None,
    load_in_4bit: bool = True,
) -> dict[str, Any]:
    """The report (see the module docstring); `quick` uses a handful of items (tests), `tasks` a
    selection of `TASKS` (names or groups; None = all), `config` overrides the sizes, `load_in_4bit`
    False measures in full precision instead of as served."""
    from alignx_demo.data.readers import SOURCE_FILES, resolve_data_dir

    cfg = config or (EvalConfig.quick_recipe() if quick else EvalConfig())
    selected = select_tasks(tasks)
    start = time.time()
    require_hhh(model_dir, "evaluate")
    model_dir, data_dir = Path(model_dir), resolve_data_dir(data_dir)
    loaded = load_mocae(model_dir, load_in_4bit=load_in_4bit)
    ctx = Context(cfg, loaded.tokenizer, loaded.mocae,
                  judge=Judge(judge_model, data_dir) if judge_model else None,
                  safety_judge=SafetyJudge(safety_judge_model) if safety_judge_model else None)
    selected, skipped_tasks = runnable(selected, ctx)
    per_system = any(t.scope == "system" for t in selected)
    runners, skipped_systems = build_systems(model_dir, loaded, systems if per_system else ())
    for name, why in skipped_systems.items():
        print(f"notice: system {name} skipped: {why}", file=sys.stderr)
    ctx.examples = load_axis_data(data_dir, quick=quick).examples
    ctx.eval_sets = load_eval_sets(data_dir)
    data_warnings: list[str] = []
    if any(t in OOD_TASKS for t in selected):
        ctx.ood = load_ood_slices(data_dir, data_warnings)

    run = run_tasks(selected, runners, ctx, progress=progress)
    enable_all(loaded.mocae)
    table = {name: row | composite(row) for name, row in run.rows.items()}
    routing = {split: run.model[task] for split, task in (("eval", "routing_eval"), ("xstest_shifted", "routing_shifted"))
               if task in run.model}
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "model": loaded.description,
        "model_dir": str(model_dir),
        "model_fingerprint": model_fingerprint(model_dir),
        "config": cfg.__dict__,
        "quick": quick,
        "judge": str(judge_model) if judge_model else None,
        "safety_judge": str(safety_judge_model) if safety_judge_model else None,
        "tasks": run.tasks,
        "skipped_tasks": skipped_tasks,
        "systems": table,
        "skipped_systems": skipped_systems,
        "routing": routing,
        "routing_summary": {split: routing_summary(variants) for split, variants in routing.items()},
        "refusal_detector_agreement_xstest": detector_agreement(ctx.eval_sets["xstest_completions"]),
        "samples": _samples(run.outputs, list(runners)),
        "counts": {name: record["n"] for name, record in run.tasks.items()},
        "data_files_sha256": _file_hashes(data_dir, [*SOURCE_FILES.values(), *OOD_SOURCE_FILES.values()]),
        "data_warnings": data_warnings,
        "seeds": {"bootstrap": 0, "decoding": "greedy"},
        "seconds": round(time.time() - start, 1),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    for task in ("presets", SEPARABILITY_TASK.name, *(t.name for t in OOD_TASKS)):
        if task in run.model:
            report[task] = run.model[task]
    return report


def summary_lines(report: dict[str, Any]) -> list[str]:
    """What the CLI prints after the table: routing ECE/accuracy (raw vs calibrated) per level, and
    the presets with their targets."""
    lines = []
    for split, levels in report.get("routing_summary", {}).items():
        for level, cells in levels.items():
            parts = [f"{label} ({c['variant']}) ECE {c['ece']:.4f} accuracy {c['accuracy']:.4f} n={c['n']}" for label, c in cells.items()]
            lines.append(f"routing {split} {level} level: " + "; ".join(parts))
    for name, scores in report.get(SEPARABILITY_TASK.name, {}).items():
        if isinstance(scores, dict) and "accuracy" in scores:
            lines.append(f"reference classifier {name}: accuracy {scores['accuracy']:.4f} per axis "
                         + ", ".join(f"{a} {v:.2f}" for a, v in scores["per_axis"].items()))
    if "presets" in report:
        lines += ["presets (greedy, held-out prompts; rate [95% CI]):", *target_lines(report["presets"])]
    if ROUTING_OOD_TASK.name in report:
        lines += ood_lines(report[ROUTING_OOD_TASK.name])
    if PRESETS_OOD_TASK.name in report:
        lines += ["presets out of distribution (greedy; MT-Bench and held-out harmful sources):",
                  *target_lines(report[PRESETS_OOD_TASK.name], OOD_RATES)]
    if report.get("skipped_systems"):
        lines.append(f"skipped systems: {report['skipped_systems']}")
    return lines


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
