"""About tab: which model is loaded, its model card figures, what "calibrated" means, and the
commands that reproduce every figure on the page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gradio as gr

from alignx_demo.analysis.artefacts import FILES, HOW_TO_BUILD, Artefacts
from alignx_demo.modeling.checkpoint import base_init
from alignx_demo.serving import ModelContext

CALIBRATED = """
**What "calibrated" means here.** At every decoder layer a router turns the layer's input into three
weights, one per expert. *Uncalibrated* routing is the router's raw softmax. *Calibrated* routing
passes it through three parts fitted on held-out calibration prompts, each switchable:
1. **temperature scaling** — one temperature per layer, so confidence matches how often the top axis is right;
2. **natural geometry** — class-conditional Gaussians on the router features (Mahalanobis / Fisher metric),
   blended with the router's opinion;
3. **fractal geometry** — tokens whose local intrinsic dimension or neighbour distance is far from the axis
   feature banks (off the axis manifolds) have their routing softened toward uniform.

A well-calibrated router is right about as often as it is confident: its reliability diagram follows the diagonal.
"""


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def base_origin(path: Path) -> str:
    """How the checkpoint's base began, from its train summary: warm-started from a named model, or from scratch."""
    init = base_init(path)
    return f"its base warm-started from {init}" if init else "its base trained from scratch"


def model_figures(path: Path) -> str:
    """A table of the figures the checkpoint's logs record (training, calibration)."""
    rows = []
    base = _read_json(path / "base" / "train_summary.json")
    if base:
        rows.append(f"| base parameters | {base.get('params', '—'):,} |" if isinstance(base.get("params"), int) else "| base parameters | — |")
        rows.append(f"| base training | {base.get('steps', '—')} steps, {base.get('tokens_seen', '—'):,} tokens, {base.get('train_seconds', 0) / 60:.1f} min |"
                    if isinstance(base.get("tokens_seen"), int) else "| base training | — |")
        loss = base.get("final_heldout_loss")
        if isinstance(loss, dict):
            rows.append("| base held-out loss | " + ", ".join(f"{a} {v:.3f}" for a, v in loss.items()) + " |")
    experts = _read_json(path / "logs" / "experts_summary.json")
    if experts:
        for axis, e in experts.get("experts", {}).items():
            last = e.get("last_losses", {}).get("lm")
            rows.append(f"| expert {axis} | {e.get('steps', '—')} steps on {e.get('examples', '—')} examples"
                        + (f", last LM loss {last:.3f}" if isinstance(last, (int, float)) else "") + " |")
    router = _read_json(path / "logs" / "router_summary.json")
    if router:
        steps = router.get("steps") or router.get("config", {}).get("steps")
        rows.append(f"| router | {steps if steps is not None else '—'} steps |")
    cal = _read_json(path / "logs" / "calibration_summary.json")
    if cal:
        report = cal.get("report", {})
        for label, nll in (("token NLL, select part", report.get("select_token_nll")),
                           ("prompt NLL, select part", report.get("select_prompt_nll")),
                           ("prompt NLL, shift set", (report.get("shift") or {}).get("prompt_nll"))):
            if isinstance(nll, dict) and nll:
                rows.append(f"| calibration {label} | " + " → ".join(f"{k} {v:.3f}" for k, v in nll.items() if isinstance(v, float)) + " |")
    if not rows:
        return "No training logs found in the checkpoint."
    return "| figure | value |\n|---|---|\n" + "\n".join(rows) + f"\n\n*(read from `{path.name}/base/train_summary.json` and `{path.name}/logs/*_summary.json`)*"


def about_markdown(context: ModelContext, artefacts: Artefacts) -> str:
    parts = ["### The model"]
    if context.loaded is None:
        parts.append(f"No model is loaded: {context.problem}")
    else:
        loaded = context.loaded
        cfg = loaded.mocae.config
        counts = loaded.mocae.count_parameters()
        kind = (f"the bundled demo model, {base_origin(loaded.path)}, trained by this project's own pipeline"
                if loaded.path.resolve().parent.name == "assets" else f"the checkpoint at `{loaded.path}`")
        base = cfg.base_model or f"{loaded.path.name}/base"
        parts.append(
            f"Serving **{context.name}** — {kind}. Base: `{base}` ({loaded.mocae.model.config.model_type}, "
            f"{counts['base']:,} parameters); three rank-{cfg.rank} LoRA experts on {', '.join(cfg.target_modules)} "
            f"({counts['experts']:,} parameters) and one router per layer ({counts['routers']:,}); "
            f"calibration: {', '.join(loaded.mocae.calibration.names) if loaded.mocae.calibration else 'none (uncalibrated only)'}."
        )
        if context.notices:
            parts.append("#### How the model was loaded (notes for the operator)\n"
                         + "\n".join(f"- {n}" for n in context.notices))
        parts.append("#### Model card figures\n" + model_figures(loaded.path))
    parts.append(CALIBRATED)
    parts.append("### Reproduce every figure")
    commands = [
        ("The bundled model, exactly as it was built (base in four resumed runs, then the other stages, evaluation, "
         "release; the run folder is outside the bundle, `release` copies it in and writes the model card)",
         "\n".join(BUNDLE_RECIPE)),
    ]
    by_command: dict[str, list[str]] = {}
    for key in FILES:
        data = artefacts.get(key)
        if data and data.get("command"):  # an artefact without its header names no command to list
            by_command.setdefault(data["command"], []).append(
                f"`{FILES[key]}` (built {data.get('created', '?')} for {data.get('model', '?')})")
    for cmd, files in by_command.items():
        commands.append(("Precomputed " + ", ".join(files), cmd))
    if not any(artefacts.get(k) for k in FILES):
        commands.append(("Precomputed maps, metrics, reliability and examples", HOW_TO_BUILD))
    commands.append(("Speed and memory", "python -m alignx_demo bench --quick --out runs/bench.json"))
    for what, cmd in commands:
        parts.append(f"- {what}:\n\n  ```bash\n  " + cmd.replace("\n", "\n  ") + "\n  ```")
    return "\n\n".join(parts)


BUNDLE_RECIPE = (
    "python -m alignx_demo train base --init minilm --out runs/minilm --lr 3e-4 --warmup-steps 100 --max-steps 3600 --clock cpu --eval-every 100 --save-every 100   # stopped: step 595",
    "python -m alignx_demo train snapshot --out runs/minilm --to assets/training/minilm-base   # fp16; each later session started from the latest snapshot",
    "python -m alignx_demo train base --from-snapshot assets/training/minilm-base --out runs/minilm2 --max-steps 2600 --clock cpu --eval-every 100 --save-every 100   # done: step 2600 (snapshot at step 877 between sessions)",
    "python -m alignx_demo train experts --data-dir ../shared/data --out runs/minilm2",
    "python -m alignx_demo train router --data-dir ../shared/data --out runs/minilm2 --context-scope prompt --match-phrasing --steps 800   # routers r1",
    "python -m alignx_demo train router --data-dir ../shared/data --out runs/minilm2 --context-scope prompt --match-phrasing --steps 800 --own-answers 1000   # routers r3: r1 writes the own answers",
    "python -m alignx_demo train calibrate --data-dir ../shared/data --out runs/minilm2",
    "python -m alignx_demo train baselines --data-dir ../shared/data --out runs/minilm2 --threads 2",
    "python -m alignx_demo evaluate --model assets/demo-model --data-dir ../shared/data --out precomputed/eval.json   # on a copy of runs/minilm2",
    "python -m alignx_demo release --run runs/minilm2 --to assets/demo-model --data-dir ../shared/data --eval-report precomputed/eval.json --ood-report precomputed/eval.json --base-comparison precomputed/base_comparison.json",
)
"""The commands that built the bundled model (docs/training.md lists the same lines; a test checks)."""


def model_card(context: ModelContext) -> str | None:
    if context.loaded is None:
        return None
    path = context.loaded.path / "MODEL_CARD.md"
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None


def build_about_tab(context: ModelContext, artefacts: Artefacts) -> None:
    gr.Markdown(about_markdown(context, artefacts), elem_classes=["ax-figures"])
    card = model_card(context)
    if card:
        with gr.Accordion("Model card (MODEL_CARD.md of the checkpoint)", open=False):
            gr.Markdown(card)
