"""Pre-training of the small demo base model on the train split: from scratch or warm-started.

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
- Initialisation: from scratch (a Llama with this project's byte-level BPE tokenizer), or warm-started
  from a pretrained BERT encoder turned causal decoder (`warm_start`, `init="minilm"`), with its
  own WordPiece tokenizer written to the tokenizer folder.
- Device placement through `accelerate.Accelerator`, so the same command uses a GPU when present
  (fp32 everywhere; on CPU `threads` sets torch's thread count).
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from alignx_demo.config import AXES
from alignx_demo.data import roles
from alignx_demo.training import common, warm_start

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
        init: "scratch" (a Llama of the sizes above, random init) or a pretrained BERT encoder to
            warm-start from ("minilm" or a folder, `warm_start`): its sizes and tokenizer replace the
            ones above.
        clock: what `max_minutes` and the logged minutes count: "wall" seconds, or "cpu" seconds
            of this process divided by `threads` (equal on a quiet machine; "cpu" keeps a
            comparison at equal CPU time fair when other work shares the cores).
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
    init: str = "scratch"
    clock: str = "wall"

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


def _open_checkpoint(ckpt_dir: Path, base_dir: Path, cfg: BaseTrainConfig, resume: bool, overwrite: bool) -> dict[str, Any] | None:
    """The trainer state to resume from (its sizes adopted into `cfg`), or None after clearing an old run."""
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
        for name in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size", "context", "init", "clock"):
            if name in saved and saved[name] != getattr(cfg, name):
                print(f"[base] --resume: using the checkpoint's {name}={saved[name]} (not {getattr(cfg, name)})")
                setattr(cfg, name, saved[name])
        return state
    for path in (ckpt_dir, base_dir / LOG_FILE, base_dir / SUMMARY_FILE):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    return None


def _load_tokenizer(cfg: BaseTrainConfig, tok_dir: Path, ckpt_dir: Path | None) -> Any:
    """The run's tokenizer: the checkpoint's when resuming (`ckpt_dir`), else the trained BPE one, or
    the warm start's (written to `tok_dir`)."""
    from transformers import AutoTokenizer  # noqa: PLC0415

    if ckpt_dir is not None and (ckpt_dir / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(ckpt_dir))
    if cfg.init != "scratch":
        return warm_start.save_chat_tokenizer(cfg.init, tok_dir, cfg.context)
    if not (tok_dir / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"no tokenizer in {tok_dir}: run `python -m alignx_demo train tokenizer --out {tok_dir.parent}` first "
            f"(or pass --tokenizer PATH)"
        )
    return AutoTokenizer.from_pretrained(str(tok_dir))


def _build_model(cfg: BaseTrainConfig, tokenizer: Any, state: dict[str, Any] | None, ckpt_dir: Path) -> Any:
    """The checkpoint's model when resuming; else a random Llama, or the warm-started BERT decoder."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM  # noqa: PLC0415

    if state is not None:
        model = AutoModelForCausalLM.from_pretrained(str(ckpt_dir), dtype=torch.float32)  # fp16 files upcast
    elif cfg.init == "scratch":
        model = LlamaForCausalLM(_model_config(cfg, tokenizer))
    else:
        model = warm_start.bert_decoder(cfg.init, tokenizer, cfg.context)
        c = model.config  # the run's record states the sizes trained, not the Llama defaults
        cfg.hidden_size, cfg.num_layers, cfg.intermediate_size = c.hidden_size, c.num_hidden_layers, c.intermediate_size
        cfg.num_heads = cfg.num_kv_heads = c.num_attention_heads
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.generation_config, name, getattr(tokenizer, name))
    return model


class _BaseRun:
    """The state of one training session: counters carried across resumes, the log, checkpoints."""

    def __init__(self, cfg: BaseTrainConfig, out: Path, state: dict[str, Any] | None, parts: dict[str, Any]) -> None:
        self.cfg, self.state = cfg, state or {}
        self.base_dir, self.ckpt_dir = out / BASE_DIR, out / CHECKPOINT_DIR
        self.accelerator, self.model, self.optimizer = parts["accelerator"], parts["model"], parts["optimizer"]
        self.tokenizer, self.heldout, self.counts, self.axis_tokens = (
            parts["tokenizer"], parts["heldout"], parts["counts"], parts["axis_tokens"])
        self.n_params = parts["n_params"]
        self.step = int(self.state.get("step", 0))
        self.tokens_seen = int(self.state.get("tokens_seen", 0))
        self.axis_tokens_seen = dict(self.state.get("axis_tokens_seen", {a: 0 for a in AXES}))
        self.timer = common.Timer(float(self.state.get("train_seconds", 0.0)),
                                  cpu_threads=torch.get_num_threads() if cfg.clock == "cpu" else None)
        self.initial_heldout = self.state.get("initial_heldout")
        self.last_heldout = self.state.get("last_heldout")
        self.log = common.JsonlLog(self.base_dir / LOG_FILE)
        self.session_tokens, self.session_t0 = 0, time.time()
        self.stop_reason = "max_steps"

    def progress_fraction(self) -> float:
        """How far through the budget (steps or minutes, whichever is further): drives the cosine."""
        fr = self.step / self.cfg.max_steps if self.cfg.max_steps else 0.0
        if self.cfg.max_minutes:
            fr = max(fr, self.timer.elapsed / (self.cfg.max_minutes * 60))
        return fr

    def budget_spent(self) -> str | None:
        if self.cfg.max_steps is not None and self.step >= self.cfg.max_steps:
            return "max_steps"
        if self.cfg.max_minutes is not None and self.timer.elapsed >= self.cfg.max_minutes * 60:
            return "max_minutes"
        return None

    def tokens_per_s(self) -> float:
        return self.session_tokens / max(time.time() - self.session_t0, 1e-9)

    def summary(self, finished: bool) -> dict[str, Any]:
        return {
            "finished": finished and self.stop_reason in ("max_steps", "max_minutes"),
            "stopped": finished,
            "stop_reason": self.stop_reason if finished else None,
            "params": self.n_params,
            "steps": self.step,
            "tokens_seen": self.tokens_seen,
            "axis_tokens_seen": self.axis_tokens_seen,
            "axis_train_tokens": self.axis_tokens,
            "axis_epochs": {a: round(self.axis_tokens_seen.get(a, 0) / max(self.axis_tokens.get(a, 1), 1), 3) for a in AXES},
            "train_seconds": round(self.timer.elapsed, 1),
            "clock": self.cfg.clock,
            "tokens_per_s_session": round(self.tokens_per_s(), 1),
            "tokens_per_s": round(self.tokens_seen / max(self.timer.elapsed, 1e-9), 1),
            "initial_heldout_loss": self.initial_heldout,
            "final_heldout_loss": self.last_heldout,
            "examples": self.counts,
            "vocab_size": len(self.tokenizer),
            "device": str(self.accelerator.device),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "config": self.cfg.to_dict(),
        }

    def checkpoint(self, finished: bool = False) -> None:
        if not self.accelerator.is_main_process:
            return
        state = {
            "step": self.step, "tokens_seen": self.tokens_seen, "axis_tokens_seen": self.axis_tokens_seen,
            "train_seconds": self.timer.elapsed, "initial_heldout": self.initial_heldout,
            "last_heldout": self.last_heldout, "config": self.cfg.to_dict(),
        }
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)
        common.save_checkpoint(self.ckpt_dir, self.accelerator.unwrap_model(self.model), optimizer, state, self.tokenizer)
        common.export_model_folder(self.ckpt_dir, self.base_dir)
        (self.base_dir / SUMMARY_FILE).write_text(json.dumps(self.summary(finished), indent=2))

    def evaluate(self) -> dict[str, float]:
        losses = {a: round(v, 4) for a, v in common.heldout_loss(self.model, self.heldout, self.accelerator.device).items()}
        self.last_heldout = losses
        if self.initial_heldout is None:
            self.initial_heldout = losses
        self.log.write({"type": "eval", "step": self.step, "tokens_seen": self.tokens_seen,
                        "train_seconds": round(self.timer.elapsed, 1), "heldout_loss": losses})
        return losses

    def train_step(self, sampler: common.AxisBlocks) -> tuple[float, float]:
        """One optimiser step on a batch drawn from (seed, step); returns (loss, lr)."""
        cfg = self.cfg
        lr = common.lr_at(self.progress_fraction(), self.step, lr=cfg.lr, warmup_steps=cfg.warmup_steps, min_lr_ratio=cfg.min_lr_ratio)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        x, axes = sampler.batch(cfg.seed, self.step, cfg.batch_size)
        x = x.to(self.accelerator.device)
        loss = self.model(input_ids=x, labels=x).loss
        self.accelerator.backward(loss)
        if cfg.grad_clip:
            self.accelerator.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += x.numel()
        self.session_tokens += x.numel()
        for a in axes:
            self.axis_tokens_seen[a] = self.axis_tokens_seen.get(a, 0) + cfg.context
        return float(loss.detach()), lr

    def loop(self, sampler: common.AxisBlocks, stop: common.StopFlag, stop_at_step: int | None, progress: bool) -> None:
        """Train until the budget is spent or a stop arrives; log, evaluate and checkpoint on schedule."""
        from tqdm.auto import tqdm  # noqa: PLC0415

        cfg = self.cfg
        if self.step == 0:
            self.evaluate()
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="base", unit="step", disable=not progress,
                   mininterval=2.0, dynamic_ncols=True)
        ema = None
        try:
            while True:
                if stop_at_step is not None and self.step >= stop_at_step:
                    stop.reason = stop.reason or "stop_at_step"
                reason = self.budget_spent() or stop.reason
                if reason:
                    self.stop_reason = reason
                    break
                lv, lr = self.train_step(sampler)
                ema = lv if ema is None else 0.95 * ema + 0.05 * lv
                bar.update(1)
                bar.set_postfix(loss=f"{ema:.3f}", lr=f"{lr:.2e}", tok_s=f"{self.tokens_per_s():.0f}", refresh=False)
                if self.step % cfg.log_every == 0:
                    self.log.write({"type": "train", "step": self.step, "loss": round(lv, 4), "loss_ema": round(ema, 4), "lr": lr,
                                    "tokens_seen": self.tokens_seen, "train_seconds": round(self.timer.elapsed, 1),
                                    "tokens_per_s": round(self.tokens_per_s(), 1)})
                if cfg.eval_every and self.step % cfg.eval_every == 0:
                    losses = self.evaluate()
                    bar.write(f"[base] step {self.step}: held-out loss " + ", ".join(f"{a} {v:.3f}" for a, v in losses.items())
                              + f" | train loss {ema:.3f} | {self.tokens_per_s():.0f} tok/s")
                if cfg.save_every and self.step % cfg.save_every == 0:
                    self.checkpoint()
        except KeyboardInterrupt:
            self.stop_reason = "interrupted"
        finally:
            bar.close()


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

    Raises FileNotFoundError when the tokenizer folder is missing (from-scratch runs),
    FileExistsError when a checkpoint exists and neither `resume` nor `overwrite` is set.
    """
    from accelerate import Accelerator  # noqa: PLC0415
    from transformers.utils import logging as hf_logging  # noqa: PLC0415

    from alignx_demo.data.readers import load_axis_data  # noqa: PLC0415

    hf_logging.disable_progress_bar()  # no "Writing model shards" bars at every checkpoint
    cfg = cfg or BaseTrainConfig()
    if cfg.max_steps is None and cfg.max_minutes is None:
        raise ValueError("set max_steps or max_minutes (or both): the run needs a budget")
    out = Path(out_dir)
    tok_dir = Path(tokenizer_dir) if tokenizer_dir else out / TOKENIZER_DIR
    if cfg.init == "scratch" and not resume and not (tok_dir / "tokenizer.json").is_file():
        _load_tokenizer(cfg, tok_dir, None)  # raises the one-sentence error before anything is cleared
    state = _open_checkpoint(out / CHECKPOINT_DIR, out / BASE_DIR, cfg, resume, overwrite)
    common.set_threads(cfg.threads)
    common.set_seed(cfg.seed)
    accelerator = Accelerator()
    if accelerator.num_processes > 1:
        raise ValueError("`train base` runs in one process (a GPU when present); start it without `accelerate launch` "
                         "— the experts, router and baselines stages run data-parallel")
    tokenizer = _load_tokenizer(cfg, tok_dir, out / CHECKPOINT_DIR if state is not None else None)
    t_data = time.time()
    data = load_axis_data(data_dir, quick=cfg.quick, max_per_source=cfg.max_per_source)
    for w in data.warnings[:20]:
        print(f"[data] warning: {w}")
    sampler, heldout, counts = prepare_blocks(tokenizer, data.examples, cfg)
    print(f"[base] data: {counts}; train tokens per axis {sampler.tokens()} ({time.time() - t_data:.1f}s)")

    model = _build_model(cfg, tokenizer, state, out / CHECKPOINT_DIR)
    n_params = common.count_parameters(model)
    optimizer = _optimizer(model, cfg)
    optimizer_meta = (state or {}).get("optimizer")
    if optimizer_meta and (out / CHECKPOINT_DIR / common.OPTIMIZER_FILE).is_file():
        common.optimizer_from_safetensors(optimizer, out / CHECKPOINT_DIR / common.OPTIMIZER_FILE, optimizer_meta)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    run = _BaseRun(cfg, out, state, dict(accelerator=accelerator, model=model, optimizer=optimizer, tokenizer=tokenizer,
                                         heldout=heldout, counts=counts, axis_tokens=sampler.tokens(), n_params=n_params))
    stop = common.StopFlag().install()
    try:
        run.loop(sampler, stop, stop_at_step, progress)
    finally:
        stop.restore()
    if not run.last_heldout or not cfg.eval_every or run.step % cfg.eval_every != 0:
        run.evaluate()
    run.checkpoint(finished=True)
    result = run.summary(True)
    print(f"[base] stopped ({run.stop_reason}) at step {run.step}: {run.tokens_seen} tokens, "
          f"{result['tokens_per_s_session']} tok/s this session; held-out loss {run.last_heldout}; saved {out / BASE_DIR}")
    return result
