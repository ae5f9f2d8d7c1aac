"""Stage 2 — training the routers with the base and the experts frozen.

Mixed axis data from the train split — the three experts' data roles plus every other prompt of
each axis without an answer (`data.roles.router_examples`), axes sampled equally, no preamble: at
inference the router must infer the axis from the prompt itself — soft uncalibrated routing. Loss:
    L = L_LM(response tokens, through the mixture)
        + w_route · ½ Σ_span CE(p averaged over the span's tokens and layers, example axis)
          (H3Fusion-style; spans: the prompt after the shared template prefix, and the response)
        + w_entropy · mean per-token routing entropy
        + w_balance · KL(batch-mean p ‖ uniform)
with w_route = 1.0, w_entropy = 0.01, w_balance = 0.01 by default.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from alignx_demo.config import AXES, GenerationSettings, RoutingSettings
from alignx_demo.data.records import AxisExample, stable_rank
from alignx_demo.data.roles import router_examples
from alignx_demo.generation import RoutedGeneration
from alignx_demo.modeling.checkpoint import CALIBRATION_FILE, CONFIG_FILE, ROUTER_FILE, load_mocae
from alignx_demo.modeling.mocae import MoCaEModel
from alignx_demo.modeling.provenance import trained_metadata
from alignx_demo.training.common import JsonlLog, is_main_process
from alignx_demo.training.finetune import encode_set, train_loop


@dataclass
class RouterConfig:
    """Stage 2 settings: steps, batch size, learning rate, loss weights, max tokens per example;
    `context_scope` ("sequence" or "prompt": what the routers' running mean covers, `MoCaEConfig`),
    `match_phrasing` (repeat the prompts whose opening another axis owns, `data.roles`), `mismatch`
    (the share of each role's examples added again with another axis's answer, `roles.mismatched`) and
    `own_answers` (how many of each axis's answered prompts are added again with the answer the checkpoint
    itself writes with its current routers, `own_tokens` greedy tokens: `own_answer_rows`)."""

    steps: int = 1600
    batch_size: int = 8
    lr: float = 5e-3
    route_weight: float = 1.0
    entropy_weight: float = 0.01
    balance_weight: float = 0.01
    max_len: int = 256
    seed: int = 0
    context_scope: str = "sequence"
    match_phrasing: bool = False
    mismatch: float = 0.0
    own_answers: int = 0
    own_tokens: int = 32

    @classmethod
    def quick_recipe(cls, **overrides: Any) -> RouterConfig:
        return cls(**({"steps": 15, "batch_size": 6, "max_len": 128} | overrides))


def training_rows(tokenizer: Any, examples: list[AxisExample], cfg: RouterConfig, labelled: bool = False) -> list[AxisExample]:
    """What the routers train on: the data roles of the project's HHH sources (`roles.router_examples`), or —
    your own labelled rows (`training.labels`, any axes) — every train row as given, its answer (if any) included."""
    if labelled:
        return [e for e in examples if e.split == "train"]
    return [e for axis in AXES
            for e in router_examples(tokenizer, examples, axis, match_phrasing=cfg.match_phrasing, mismatch=cfg.mismatch)]


def own_answer_rows(mocae: MoCaEModel, tokenizer: Any, rows: list[AxisExample], cfg: RouterConfig,
                    progress: bool = True) -> list[AxisExample]:
    """The first `cfg.own_answers` of each axis's answered prompts (fixed hash order), each with the greedy answer
    the model writes under its current routers (soft, uncalibrated: what the routers train under), labelled
    with the prompt's axis and marked `meta["own_answer"]` — routed, never learned as text.

    Why: routers trained only on the sources' answers see a refusal after every harmful request, but the model
    itself often hedges or complies ("i'm not certain…"), and the routers follow that text into the honest or
    helpful expert while generating (on the MiniLM candidate, 0.66–0.81 of held-out harmful prompts were
    routed honest over their answers). Routing the model's own answers by what the prompt asked (on-policy,
    as DAgger trains on the states the learner reaches) teaches them to hold the prompt's axis through them."""
    from tqdm.auto import tqdm

    if all(not bool(p.any()) for p in mocae.routers.parameters()):
        raise ValueError("own answers need trained routers to write them: run `train router` once without "
                         "--own-answers, then again with it")
    seen: set[str] = set()
    chosen = []
    for axis in mocae.axes:
        answered = [e for e in rows if e.axis == axis and e.response and not e.meta.get("mismatched")
                    and not (e.prompt in seen or seen.add(e.prompt))]
        answered.sort(key=lambda e: stable_rank(e.id))
        chosen += answered[: cfg.own_answers]
    routing, settings = RoutingSettings(mode="soft", calibrated=False), GenerationSettings(max_new_tokens=cfg.own_tokens)
    out = []
    for example in tqdm(chosen, desc="own answers", disable=not progress):
        run = RoutedGeneration(mocae, tokenizer, example.prompt, settings, routing)
        for _ in run:
            pass
        if run.text.strip():
            out.append(dataclasses.replace(example, id=f"{example.id}:own", response=run.text,
                                           meta={**example.meta, "own_answer": True}))
    return out


def train_router(
    out: str | Path, examples: list[AxisExample], cfg: RouterConfig, *, load_in_4bit: bool = False, progress: bool = True,
    labelled: bool = False,
) -> dict[str, Any]:
    """Train the routers of the checkpoint in `out` (on the data roles of `examples`, or with `labelled` on its
    train rows as given) and rewrite its router.safetensors (marked trained,
    `modeling.provenance`) and logs/router_summary.json, deleting the calibration fitted for the old
    routers — all only once training has finished (`pipeline.staged`): a run that fails changes nothing."""
    from alignx_demo.training.pipeline import staged

    out = Path(out)
    loaded = load_mocae(out, load_in_4bit=load_in_4bit, allow_untrained=True)  # the routers are reset below
    mocae, tokenizer = loaded.mocae, loaded.tokenizer
    train = training_rows(tokenizer, examples, cfg, labelled)
    if cfg.own_answers > 0:  # written by the routers being replaced, before their reset
        train += own_answer_rows(mocae, tokenizer, train, cfg, progress)
    mocae.calibration = None  # calibration is fitted afterwards, on the new routers
    for param in mocae.routers.parameters():  # from the zero init (uniform routing), so a rerun reproduces
        torch.nn.init.zeros_(param)
    if cfg.context_scope not in ("sequence", "prompt"):
        raise ValueError(f"context_scope must be 'sequence' or 'prompt', got {cfg.context_scope!r}")
    mocae.config.context_scope = cfg.context_scope  # the routers learn the scope they will be served with
    data = encode_set(tokenizer, train, cfg.max_len, axes=mocae.axes)
    for p in mocae.expert_parameters():
        p.requires_grad_(False)
    result = train_loop(
        mocae, list(mocae.routers.parameters()), data,
        routing=RoutingSettings(mode="soft", calibrated=False),
        steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, pad_id=tokenizer.pad_token_id, seed=cfg.seed,
        balanced=True,
        loss_weights={"route": cfg.route_weight, "entropy": cfg.entropy_weight, "balance": cfg.balance_weight},
        log=JsonlLog(out / "logs" / "router.jsonl"), desc="router", progress=progress,
    )
    summary = {"config": asdict(cfg), "examples": len(data)} | result
    if is_main_process():
        routers = {f"routers.{k}": v.detach().float().cpu().contiguous() for k, v in mocae.routers.state_dict().items()}
        with staged(out, "router", remove=[CALIBRATION_FILE]) as tmp:  # the calibration was fitted for the old routers
            marker = trained_metadata("router", steps=cfg.steps, examples=len(data))
            save_file(routers, str(tmp / ROUTER_FILE), metadata={"format": "pt", **marker})
            (tmp / CONFIG_FILE).write_text(json.dumps(mocae.config.to_dict(), indent=2))
            (tmp / "logs").mkdir()
            (tmp / "logs" / "router_summary.json").write_text(json.dumps(summary, indent=1))
    return summary
