"""Runs the MoCaE training stages in order on one output folder (the checkpoint folder).

OUT/base (from `train base`, or `--base-model`) → experts (Stage 1) → router (Stage 2) →
calibrate → baselines. Each stage reads what the previous ones wrote, so a stage can be rerun on
its own; `stage_done` tells `train all --resume` which ones to skip.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alignx_demo.data.readers import load_axis_data
from alignx_demo.training.common import end_process_group, is_main_process, set_seed, set_threads, wait_for_everyone

STAGES = ("experts", "router", "calibrate", "baselines")
_OUTPUTS = {
    "experts": "experts/honest/adapter_model.safetensors",
    "router": "logs/router_summary.json",
    "calibrate": "calibration.safetensors",
    "baselines": "baselines/uniform_merge/adapter_model.safetensors",
}


def stage_done(out: Path, stage: str) -> bool:
    return (out / _OUTPUTS[stage]).exists()


def run_stages(
    names: list[str],
    *,
    data_dir: str | Path,
    out: str | Path,
    quick: bool = False,
    base_model: str | None = None,
    load_in_4bit: bool = False,
    steps: int | None = None,
    threads: int | None = 1,
    seed: int = 0,
    max_per_source: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the named stages; return {stage: summary}."""
    from alignx_demo.training.baselines import BaselinesConfig, train_baselines
    from alignx_demo.training.calibrate import CalibrationConfig, calibrate
    from alignx_demo.training.experts import ExpertsConfig, train_experts
    from alignx_demo.training.router import RouterConfig, train_router

    main = is_main_process()  # pins each `accelerate launch` process to its device before any load
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages: {', '.join(STAGES)}")
    set_threads(threads)
    set_seed(seed)
    out = Path(out)
    if base_model is None and not (out / "base" / "config.json").exists():
        raise FileNotFoundError(f"no base model in {out / 'base'}: run `train base --out {out}` first, or pass --base-model")
    examples = load_axis_data(data_dir, quick=quick, max_per_source=max_per_source).examples
    summaries: dict[str, Any] = {}
    for name in names:
        if name == "experts":
            cfg = ExpertsConfig.quick_recipe() if quick else ExpertsConfig()
            cfg.steps, cfg.seed = steps or cfg.steps, seed
            summaries[name] = train_experts(out, examples, cfg, base_model=base_model, load_in_4bit=load_in_4bit, progress=progress)
        elif name == "router":
            cfg = RouterConfig.quick_recipe() if quick else RouterConfig()
            cfg.steps, cfg.seed = steps or cfg.steps, seed
            summaries[name] = train_router(out, examples, cfg, load_in_4bit=load_in_4bit, progress=progress)
        elif name == "calibrate":
            if not main:  # a fit on held-out data, no training: the main process does it alone
                wait_for_everyone()
                continue
            cfg = CalibrationConfig.quick_recipe() if quick else CalibrationConfig()
            cfg.seed = seed
            summaries[name] = calibrate(out, examples, cfg, load_in_4bit=load_in_4bit)
        else:
            cfg = BaselinesConfig.quick_recipe() if quick else BaselinesConfig()
            if steps:
                cfg.steps_per_axis = steps
            cfg.seed = seed
            summaries[name] = train_baselines(out, examples, cfg, load_in_4bit=load_in_4bit, progress=progress)
        wait_for_everyone()  # the next stage loads what this one wrote
    end_process_group()
    return summaries
