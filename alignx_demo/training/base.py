"""Pre-training of the small demo base model (a LlamaForCausalLM) from scratch, on the train split.

Recipe (DESIGN.md section 5):

- Data role (`data.roles.base_examples`): the base is a neutral general assistant. By default it
  learns from the helpful axis's general instruction/answer text only, minus the few answers that
  refuse or hedge; refusals and "I have no comment" are left to the experts. A base trained on
  the naive mix (10 % refusals, 10 % TruthfulQA answers) learned to refuse and hedge first, because
  those answers are the most repetitive text in the corpus. `axis_weights` can bring the other
  axes back (that mix is kept as the joint-SFT baseline's data, where it shows "too harmless").
- Whole answers by default (`max_answer_tokens` None; a number cuts each answer to its sentences
  within that many tokens). Measured on the shipped base: answers cut at 192 tokens hold 1.40 M
  unique tokens, and after ≈4 epochs of them held-out helpful loss stalled at 4.36 and a warm
  restart overfit (4.43); whole answers hold 2.32 M, and continuing on them reached 4.07.
- Text format: `templates.encode_example`, with NO axis preamble (the base has no expert identity).
  Examples are packed into fixed-length blocks per axis; each batch row picks its axis with the
  sampling weights, then a random block of that axis.
- Loss: next-token loss on all tokens of each block (prompts included: for a base LM the prompt
  text is language to learn too). Blocks are packed across example boundaries (BOS/EOS mark
  them) without cross-document attention masking, as in standard LM pre-training.
- Optimiser: AdamW (betas 0.9/0.95, weight decay 0.1 on matrices only), linear warmup, then cosine
  decay to 10 % of the peak LR. The cosine runs over the training *budget*: progress is the larger
  of step/max_steps and elapsed/max_minutes, so a time-bounded run ends at the low LR.
- Held-out loss per axis on fixed calibration-split blocks of the full, unfiltered answers (so the
  figure compares with earlier bases whatever the data role), every `eval_every` steps, logged to
  `OUT/base/training_log.jsonl`.
- Checkpoints (safetensors only, see `common`) every `save_every` steps, on SIGTERM / Ctrl-C and
  at the end, in `OUT/checkpoints/base/`; each checkpoint is also exported to `OUT/base/` (a plain HF
  model folder with the tokenizer) so later stages can use the latest base while training runs.
  `resume=True` continues from the checkpoint (exact optimizer state; batches are a pure function
  of seed and step). `max_steps` and `max_minutes` are totals across resumes.
- Device placement through `accelerate.Accelerator`, so the same command uses a GPU when present
  (fp32 everywhere; on CPU `threads` sets torch's thread count).
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from alignx_demo.config import AXES
from alignx_demo.data import roles
from alignx_demo.training import common

BASE_DIR = "base"
CHECKPOINT_DIR = "checkpoints/base"
TOKENIZER_DIR = "tokenizer"
LOG_FILE = "training_log.jsonl"
SUMMARY_FILE = "train_summary.json"


@dataclass
class BaseTrainConfig:
    """Size and schedule of the base pre-training run.

    Attributes:
        hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size: Llama model size
            (num_kv_heads None: = num_heads, plain multi-head attention).
        context: block length in tokens (also max_position_embeddings).
        batch_size: blocks per optimiser step.
        lr, warmup_steps, min_lr_ratio, weight_decay, grad_clip: optimiser settings.
        axis_weights: sampling weights of (helpful, harmless, honest) blocks (0: not trained on).
        max_answer_tokens: answers are cut to their sentences within this many tokens (None: whole).
        drop_refusals: leave out training answers that refuse or hedge (`data.behaviour`).
        max_steps: total optimiser steps (None: no step limit; then max_minutes must be set).
        max_minutes: total training minutes across resumes (None: no time limit).
        eval_every, eval_blocks: held-out loss every N steps, on at most this many blocks per axis.
        save_every: checkpoint every N steps (0: only on stop/end).
        log_every: training-loss log line every N steps.
        threads: torch CPU threads (None: torch default).
        seed: seed of weights init and batch sampling.
        max_per_source: cap on examples per source file (None: all).
        quick: the tiny smoke-test recipe (data sample, tiny model).
    """

    hidden_size: int = 256
    num_layers: int = 6
    num_heads: int = 8
    num_kv_heads: int | None = None
    intermediate_size: int = 704
    context: int = 256
    batch_size: int = 8
    lr: float = 1e-3
    warmup_steps: int = 200
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    axis_weights: dict[str, float] = field(default_factory=lambda: {"helpful": 1.0, "harmless": 0.0, "honest": 0.0})
    max_answer_tokens: int | None = roles.BASE_ANSWER_TOKENS
    drop_refusals: bool = True
    max_steps: int | None = 20000
    max_minutes: float | None = None
    eval_every: int = 100
    eval_blocks: int = 16
    save_every: int = 200
    log_every: int = 10
    threads: int | None = 2
    seed: int = 0
    max_per_source: int | None = None
    quick: bool = False

    @classmethod
    def quick_recipe(cls, **overrides: Any) -> BaseTrainConfig:
        """The smoke-test recipe: hidden 64, 2 layers, context 128, 120 steps (seconds on one CPU core)."""
        base = dict(
            hidden_size=64, num_layers=2, num_heads=4, intermediate_size=172, context=128,
            batch_size=8, lr=3e-3, warmup_steps=10, max_steps=120, eval_every=40, eval_blocks=4,
            save_every=60, log_every=10, quick=True,
        )
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _model_config(cfg: BaseTrainConfig, tokenizer: Any):
    from transformers import LlamaConfig  # noqa: PLC0415

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads or cfg.num_heads,
        max_position_embeddings=cfg.context,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rms_norm_eps=1e-5,
        initializer_range=0.02,
    )


def _optimizer(model: torch.nn.Module, cfg: BaseTrainConfig) -> torch.optim.Optimizer:
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)


def prepare_blocks(tokenizer: Any, examples: list, cfg: BaseTrainConfig) -> tuple[common.AxisBlocks, dict[str, torch.Tensor], dict[str, int]]:
    """Train blocks per axis (weighted sampler), held-out calibration blocks per axis, example counts."""
    train, heldout, counts = {}, {}, {}
    axes = tuple(a for a in AXES if cfg.axis_weights.get(a, 0) > 0)
    train_examples = roles.base_examples(tokenizer, examples, axes, cfg.max_answer_tokens, cfg.drop_refusals)
    for axis in AXES:
        tr = [e for e in train_examples if e.axis == axis]
        cal = [e for e in examples if e.axis == axis and e.split == "calibration"]
        counts[f"{axis}/train"] = len(tr)
        counts[f"{axis}/calibration"] = len(cal)
        if tr:
            train[axis] = common.pack_blocks([ids for ids, _ in common.encode_examples(tokenizer, tr)], cfg.context, seed=cfg.seed)
        if cal:
            blocks = common.pack_blocks([ids for ids, _ in common.encode_examples(tokenizer, cal)], cfg.context, seed=1234)
            heldout[axis] = blocks[: cfg.eval_blocks]
    return common.AxisBlocks(train, cfg.axis_weights), heldout, counts


def train_base(
    data_dir: str | Path,
    out_dir: str | Path,
    cfg: BaseTrainConfig | None = None,
    *,
    tokenizer_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    stop_at_step: int | None = None,
) -> dict[str, Any]:
    """Pre-train (or resume) the demo base; write `OUT/base/` and return the train summary dict.

    `stop_at_step` stops after that step as SIGTERM would (checkpoint, resumable), keeping the LR
    schedule of the full budget; a resumed run then matches an uninterrupted one.

    Raises FileNotFoundError when the tokenizer folder is missing, FileExistsError when a
    checkpoint exists and neither `resume` nor `overwrite` is set.
    """
    from accelerate import Accelerator  # noqa: PLC0415
    from tqdm.auto import tqdm  # noqa: PLC0415
    from transformers import AutoTokenizer, LlamaForCausalLM  # noqa: PLC0415

    from alignx_demo.data.readers import load_axis_data  # noqa: PLC0415

    from transformers.utils import logging as hf_logging  # noqa: PLC0415

    hf_logging.disable_progress_bar()  # no "Writing model shards" bars at every checkpoint
    cfg = cfg or BaseTrainConfig()
    if cfg.max_steps is None and cfg.max_minutes is None:
        raise ValueError("set max_steps or max_minutes (or both): the run needs a budget")
    out = Path(out_dir)
    base_dir, ckpt_dir = out / BASE_DIR, out / CHECKPOINT_DIR
    tok_dir = Path(tokenizer_dir) if tokenizer_dir else out / TOKENIZER_DIR
    if not (tok_dir / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"no tokenizer in {tok_dir}: run `python -m alignx_demo train tokenizer --out {out}` first "
            f"(or pass --tokenizer PATH)"
        )
    state = common.read_trainer_state(ckpt_dir)
    if state is not None and not resume and not overwrite:
        raise FileExistsError(
            f"a base checkpoint exists in {ckpt_dir} (step {state.get('step')}); pass --resume to continue it "
            f"or --overwrite to start over"
        )
    if resume and state is None:
        print(f"[base] --resume: no checkpoint in {ckpt_dir}; starting from scratch")
    if state is not None and resume:
        saved = state.get("config", {})
        for name in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size", "context"):
            if name in saved and saved[name] != getattr(cfg, name):
                print(f"[base] --resume: using the checkpoint's {name}={saved[name]} (not {getattr(cfg, name)})")
                setattr(cfg, name, saved[name])
    else:
        state = None
        for path in (ckpt_dir, base_dir / LOG_FILE, base_dir / SUMMARY_FILE):
            if path.is_dir():
                import shutil  # noqa: PLC0415

                shutil.rmtree(path)
            elif path.exists():
                path.unlink()

    common.set_threads(cfg.threads)
    common.set_seed(cfg.seed)
    accelerator = Accelerator()
    if accelerator.num_processes > 1:
        raise ValueError("`train base` runs in one process (a GPU when present); start it without `accelerate launch` "
                         "— the experts, router and baselines stages run data-parallel")
    device = accelerator.device

    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    t_data = time.time()
    data = load_axis_data(data_dir, quick=cfg.quick, max_per_source=cfg.max_per_source)
    for w in data.warnings[:20]:
        print(f"[data] warning: {w}")
    sampler, heldout, counts = prepare_blocks(tokenizer, data.examples, cfg)
    axis_tokens = sampler.tokens()
    print(f"[base] data: {counts}; train tokens per axis {axis_tokens} ({time.time() - t_data:.1f}s)")

    if state is not None:
        model = LlamaForCausalLM.from_pretrained(str(ckpt_dir), torch_dtype=torch.float32)
    else:
        model = LlamaForCausalLM(_model_config(cfg, tokenizer))
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    n_params = common.count_parameters(model)
    optimizer = _optimizer(model, cfg)
    if state is not None and (ckpt_dir / common.OPTIMIZER_FILE).is_file():
        optimizer_meta = state.get("optimizer")
        if optimizer_meta:
            common.optimizer_from_safetensors(optimizer, ckpt_dir / common.OPTIMIZER_FILE, optimizer_meta)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()

    step = int(state["step"]) if state else 0
    tokens_seen = int(state["tokens_seen"]) if state else 0
    axis_tokens_seen = dict(state.get("axis_tokens_seen", {})) if state else {a: 0 for a in AXES}
    timer = common.Timer(float(state["train_seconds"]) if state else 0.0)
    initial_heldout = state.get("initial_heldout") if state else None
    last_heldout = state.get("last_heldout") if state else None
    log = common.JsonlLog(base_dir / LOG_FILE)
    session_tokens, session_t0 = 0, time.time()
    stop = common.StopFlag().install()
    stop_reason = "max_steps"

    def progress_fraction() -> float:
        fr = 0.0
        if cfg.max_steps:
            fr = max(fr, step / cfg.max_steps)
        if cfg.max_minutes:
            fr = max(fr, timer.elapsed / (cfg.max_minutes * 60))
        return fr

    def summary(finished: bool) -> dict[str, Any]:
        session_s = max(time.time() - session_t0, 1e-9)
        return {
            "finished": finished and stop_reason in ("max_steps", "max_minutes"),
            "stopped": finished,
            "stop_reason": stop_reason if finished else None,
            "params": n_params,
            "steps": step,
            "tokens_seen": tokens_seen,
            "axis_tokens_seen": axis_tokens_seen,
            "axis_train_tokens": axis_tokens,
            "axis_epochs": {a: round(axis_tokens_seen.get(a, 0) / max(axis_tokens.get(a, 1), 1), 3) for a in AXES},
            "train_seconds": round(timer.elapsed, 1),
            "tokens_per_s_session": round(session_tokens / session_s, 1),
            "tokens_per_s": round(tokens_seen / max(timer.elapsed, 1e-9), 1),
            "initial_heldout_loss": initial_heldout,
            "final_heldout_loss": last_heldout,
            "examples": counts,
            "vocab_size": len(tokenizer),
            "device": str(device),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "config": cfg.to_dict(),
        }

    def checkpoint(finished: bool = False) -> None:
        if not accelerator.is_main_process:
            return
        unwrapped = accelerator.unwrap_model(model)
        st = {
            "step": step,
            "tokens_seen": tokens_seen,
            "axis_tokens_seen": axis_tokens_seen,
            "train_seconds": timer.elapsed,
            "initial_heldout": initial_heldout,
            "last_heldout": last_heldout,
            "config": cfg.to_dict(),
        }
        common.save_checkpoint(ckpt_dir, unwrapped, optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer, st, tokenizer)
        common.export_model_folder(ckpt_dir, base_dir)
        (base_dir / SUMMARY_FILE).write_text(json.dumps(summary(finished), indent=2))

    def evaluate() -> dict[str, float]:
        nonlocal last_heldout, initial_heldout
        losses = common.heldout_loss(model, heldout, device)
        losses = {a: round(v, 4) for a, v in losses.items()}
        last_heldout = losses
        if initial_heldout is None:
            initial_heldout = losses
        log.write({"type": "eval", "step": step, "tokens_seen": tokens_seen, "train_seconds": round(timer.elapsed, 1), "heldout_loss": losses})
        return losses

    if step == 0:
        evaluate()
    bar = tqdm(total=cfg.max_steps, initial=step, desc="base", unit="step", disable=not progress, mininterval=2.0, dynamic_ncols=True)
    ema = None
    try:
        while True:
            if cfg.max_steps is not None and step >= cfg.max_steps:
                stop_reason = "max_steps"
                break
            if cfg.max_minutes is not None and timer.elapsed >= cfg.max_minutes * 60:
                stop_reason = "max_minutes"
                break
            if stop_at_step is not None and step >= stop_at_step:
                stop.reason = stop.reason or "stop_at_step"
            if stop.reason:
                stop_reason = stop.reason
                break
            lr = common.lr_at(progress_fraction(), step, lr=cfg.lr, warmup_steps=cfg.warmup_steps, min_lr_ratio=cfg.min_lr_ratio)
            for g in optimizer.param_groups:
                g["lr"] = lr
            x, axes = sampler.batch(cfg.seed, step, cfg.batch_size)
            x = x.to(device)
            loss = model(input_ids=x, labels=x).loss
            accelerator.backward(loss)
            if cfg.grad_clip:
                accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            n_tok = x.numel()
            tokens_seen += n_tok
            session_tokens += n_tok
            for a in axes:
                axis_tokens_seen[a] = axis_tokens_seen.get(a, 0) + cfg.context
            lv = float(loss.detach())
            ema = lv if ema is None else 0.95 * ema + 0.05 * lv
            tps = session_tokens / max(time.time() - session_t0, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{ema:.3f}", lr=f"{lr:.2e}", tok_s=f"{tps:.0f}", refresh=False)
            if step % cfg.log_every == 0:
                log.write({"type": "train", "step": step, "loss": round(lv, 4), "loss_ema": round(ema, 4), "lr": lr,
                           "tokens_seen": tokens_seen, "train_seconds": round(timer.elapsed, 1), "tokens_per_s": round(tps, 1)})
            if cfg.eval_every and step % cfg.eval_every == 0:
                losses = evaluate()
                bar.write(f"[base] step {step}: held-out loss " + ", ".join(f"{a} {v:.3f}" for a, v in losses.items())
                          + f" | train loss {ema:.3f} | {tps:.0f} tok/s")
            if cfg.save_every and step % cfg.save_every == 0:
                checkpoint()
    except KeyboardInterrupt:
        stop_reason = "interrupted"
    finally:
        bar.close()
        stop.restore()
    if not last_heldout or (cfg.eval_every and step % cfg.eval_every != 0) or not cfg.eval_every:
        evaluate()
    checkpoint(finished=True)
    result = summary(True)
    print(f"[base] stopped ({stop_reason}) at step {step}: {tokens_seen} tokens, "
          f"{result['tokens_per_s_session']} tok/s this session; held-out loss {last_heldout}; saved {base_dir}")
    return result
