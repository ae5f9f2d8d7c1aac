"""Runs the MoCaE training stages in order on one output folder (the checkpoint folder).

OUT/base (from `train base`, or `--base-model`) → experts (Stage 1) → router (Stage 2) →
calibrate → baselines. Each stage reads what the previous ones wrote, so a stage can be rerun on
its own; `stage_done` tells `train all --resume` which ones to skip.

The router and calibration stages write their files into a temporary folder beside OUT (`staged`) and
move them into place only when the stage has finished, so a stage that fails leaves OUT as it was; the
files carry a "trained" marker (`modeling.provenance`) that the loader checks.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alignx_demo.config import is_hhh
from alignx_demo.data.ood import calibration_shift_set
from alignx_demo.data.readers import load_axis_data
from alignx_demo.modeling.checkpoint import checkpoint_axes
from alignx_demo.modeling.provenance import untrained_problem
from alignx_demo.training.common import end_process_group, is_main_process, set_seed, set_threads, wait_for_everyone

STAGES = ("experts", "router", "calibrate", "baselines")
_OUTPUTS = {
    "experts": "experts/honest/adapter_model.safetensors",
    "router": "logs/router_summary.json",
    "calibrate": "calibration.safetensors",
    "baselines": "baselines/uniform_merge/adapter_model.safetensors",
}


def stage_done(out: Path, stage: str) -> bool:
    """Whether a stage's output is in place — for the router and calibration, also trained for what is
    beside it (`modeling.provenance`): a rerun of the experts resets the routers, whatever logs remain."""
    if not (out / _OUTPUTS[stage]).exists():
        return False
    if stage in ("router", "calibrate"):
        return untrained_problem(out) is None
    return True


@contextmanager
def staged(out: str | Path, stage: str, remove: Sequence[str] = ()) -> Iterator[Path]:
    """A temporary folder beside `out` (on the same filesystem) for a stage's outputs. When the block
    completes, the files `remove` names (relative to `out`: outputs this stage makes stale) are deleted,
    then every file written in the folder is moved to the same place under `out` (`os.replace`, atomic
    per file) and the folder is removed; when the block raises, the folder is removed and `out` is left
    untouched."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{stage}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        for name in remove:
            (out / name).unlink(missing_ok=True)
        for file in files:
            target = out / file.relative_to(tmp)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(file, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
    router_options: dict[str, Any] | None = None,
    prompts: str | Path | None = None,
) -> dict[str, Any]:
    """Run the named stages; return {stage: summary}. `router_options` sets `RouterConfig` fields; `prompts`, a
    labelled prompt file (`training.labels`), replaces the project's sources for the router and calibration."""
    from alignx_demo.training.baselines import BaselinesConfig, train_baselines
    from alignx_demo.training.calibrate import CalibrationConfig, calibrate
    from alignx_demo.training.experts import ExpertsConfig, train_experts
    from alignx_demo.training.labels import labelled_examples
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
    # TruthfulQA's held-out categories stay unseen by every stage, so the out-of-distribution slice
    # `truthfulqa_heldout` measures new categories for every bundle trained from here on
    if prompts is not None:
        unfit = [n for n in names if n not in ("router", "calibrate")]
        if unfit:
            raise ValueError(f"--prompts trains the router and the calibration only, not {', '.join(unfit)}")
        examples, problems = labelled_examples(prompts, checkpoint_axes(out))
        for problem in problems:
            print(f"notice: {problem}", file=sys.stderr)
    else:
        if not is_hhh(axes := checkpoint_axes(out)):
            raise ValueError(f"the checkpoint in {out} has the axes {', '.join(axes)}, and the project's data trains the HHH "
                             "axes only: pass your labelled prompts with --prompts FILE")
        examples = load_axis_data(data_dir, quick=quick, max_per_source=max_per_source,
                                  exclude_heldout_categories=True).examples
    summaries: dict[str, Any] = {}
    for name in names:
        if name == "experts":
            cfg = ExpertsConfig.quick_recipe() if quick else ExpertsConfig()
            cfg.steps, cfg.seed = steps or cfg.steps, seed
            summaries[name] = train_experts(out, examples, cfg, base_model=base_model, load_in_4bit=load_in_4bit, progress=progress)
        elif name == "router":
            options = router_options or {}
            cfg = RouterConfig.quick_recipe(**options) if quick else RouterConfig(**options)
            cfg.steps, cfg.seed = steps or cfg.steps, seed
            summaries[name] = train_router(out, examples, cfg, load_in_4bit=load_in_4bit, progress=progress,
                                           labelled=prompts is not None)
        elif name == "calibrate":
            if not main:  # a fit on held-out data, no training: the main process does it alone
                wait_for_everyone()
                continue
            cfg = CalibrationConfig.quick_recipe() if quick else CalibrationConfig()
            cfg.seed = seed
            shift = [] if prompts is not None else calibration_shift_set(data_dir)  # HHH sources: not for your axes
            summaries[name] = calibrate(out, examples, cfg, load_in_4bit=load_in_4bit, shift=shift[:40] if quick else shift)
        else:
            cfg = BaselinesConfig.quick_recipe() if quick else BaselinesConfig()
            if steps:
                cfg.steps_per_axis = steps
            cfg.seed = seed
            summaries[name] = train_baselines(out, examples, cfg, load_in_4bit=load_in_4bit, progress=progress)
        wait_for_everyone()  # the next stage loads what this one wrote
    end_process_group()
    return summaries
