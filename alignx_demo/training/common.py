"""Pieces shared by the training commands: seeding, packing, axis-weighted batches, held-out loss,
LR schedule, stop conditions (time, steps, SIGTERM/Ctrl-C), JSONL logs, safetensors checkpoints.

Checkpoints are safetensors-only (no pickle): a checkpoint folder holds the model
(`save_pretrained`, safetensors), `optimizer.safetensors` (every optimizer state tensor, flattened
as `state.<param index>.<name>`), and `trainer_state.json` (step, tokens, elapsed time, the
optimizer's param-group scalars, RNG-free data position). Resuming restores the exact optimizer
state; batches are a pure function of (seed, step), so no data-loader state is needed.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alignx_demo.config import AXES
from alignx_demo.data import templates
from alignx_demo.data.records import AxisExample

TRAINER_STATE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def set_threads(threads: int | None) -> None:
    """torch.set_num_threads (and interop threads) when given; None leaves torch's default."""
    if threads:
        torch.set_num_threads(int(threads))
        try:
            torch.set_num_interop_threads(max(1, int(threads)))
        except RuntimeError:  # can only be set once, before any parallel work
            pass


# --------------------------------------------------------------------------------------------
# data: encode, pack, sample


def encode_examples(
    tokenizer: Any, examples: Sequence[AxisExample], *, preamble: str | None = None, max_len: int | None = None
) -> list[tuple[list[int], int]]:
    """templates.encode_example for each example: (ids, response start); optionally truncated."""
    out = []
    for e in examples:
        ids, start = templates.encode_example(tokenizer, e.prompt, e.response, preamble)
        if max_len is not None and len(ids) > max_len:
            ids = ids[:max_len]
        out.append((ids, start))
    return out


def pack_blocks(sequences: Sequence[Sequence[int]], block_size: int, *, seed: int = 0) -> torch.Tensor:
    """Concatenate the sequences (shuffled by seed) and cut into [n, block_size] blocks.

    The tail that does not fill a block is dropped; if everything is shorter than one block the
    stream is repeated to fill one, so every non-empty input yields at least one block.
    """
    order = list(range(len(sequences)))
    random.Random(seed).shuffle(order)
    stream: list[int] = []
    for i in order:
        stream.extend(sequences[i])
    if not stream:
        return torch.empty(0, block_size, dtype=torch.long)
    if len(stream) < block_size:
        stream = (stream * (block_size // len(stream) + 1))[:block_size]
    n = len(stream) // block_size
    return torch.tensor(stream[: n * block_size], dtype=torch.long).view(n, block_size)


@dataclass
class AxisBlocks:
    """Packed token blocks per axis, and the sampling weight of each axis."""

    blocks: dict[str, torch.Tensor]
    weights: dict[str, float]

    def __post_init__(self) -> None:
        self.axes = [a for a in AXES if a in self.blocks and len(self.blocks[a]) and self.weights.get(a, 0) > 0]
        if not self.axes:
            raise ValueError("no axis has both training blocks and a positive sampling weight")
        w = np.array([self.weights[a] for a in self.axes], dtype=np.float64)
        self.probs = w / w.sum()

    def tokens(self) -> dict[str, int]:
        return {a: int(b.numel()) for a, b in self.blocks.items()}

    def batch(self, seed: int, step: int, batch_size: int) -> tuple[torch.Tensor, list[str]]:
        """Batch for `step`: each row picks an axis by weight, then a block of it (a pure function of seed, step)."""
        rng = np.random.default_rng([seed, step])
        picks = rng.choice(len(self.axes), size=batch_size, p=self.probs)
        rows, axes = [], []
        for k in picks:
            axis = self.axes[int(k)]
            blocks = self.blocks[axis]
            rows.append(blocks[int(rng.integers(len(blocks)))])
            axes.append(axis)
        return torch.stack(rows), axes


def parse_axis_weights(text: str | Sequence[float]) -> dict[str, float]:
    """'0.7,0.15,0.15' (helpful, harmless, honest) -> {axis: weight}, normalised to sum 1."""
    values = [float(v) for v in (text.split(",") if isinstance(text, str) else text)]
    if len(values) != len(AXES) or any(v < 0 or not math.isfinite(v) for v in values) or sum(values) <= 0:
        raise ValueError(f"axis weights must be {len(AXES)} non-negative numbers (helpful,harmless,honest), got {text!r}")
    total = sum(values)
    return {a: v / total for a, v in zip(AXES, values)}


@torch.no_grad()
def heldout_loss(model: Any, blocks: dict[str, torch.Tensor], device: Any, batch_size: int = 8) -> dict[str, float]:
    """Mean next-token loss per axis on fixed held-out blocks (model put back in its previous mode)."""
    was_training = model.training
    model.eval()
    out: dict[str, float] = {}
    for axis, data in blocks.items():
        if not len(data):
            continue
        total, count = 0.0, 0
        for i in range(0, len(data), batch_size):
            x = data[i : i + batch_size].to(device)
            loss = model(input_ids=x, labels=x).loss
            n = x.numel() - x.shape[0]
            total += float(loss) * n
            count += n
        out[axis] = total / max(count, 1)
    if was_training:
        model.train()
    return out


# --------------------------------------------------------------------------------------------
# schedule and stopping


def lr_at(progress: float, step: int, *, lr: float, warmup_steps: int, min_lr_ratio: float = 0.1) -> float:
    """Linear warmup over `warmup_steps`, then cosine from lr to lr*min_lr_ratio as progress goes 0->1."""
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    p = min(max(progress, 0.0), 1.0)
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


class StopFlag:
    """Turns SIGTERM and the first SIGINT (Ctrl-C) into a flag the training loop checks after each step.

    A second Ctrl-C raises KeyboardInterrupt at once. Handlers are restored by `restore()`.
    """

    def __init__(self) -> None:
        self.reason: str | None = None
        self._old: dict[int, Any] = {}

    def install(self) -> StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.reason is not None:
            raise KeyboardInterrupt
        self.reason = "sigterm" if signum == signal.SIGTERM else "interrupted"

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


# --------------------------------------------------------------------------------------------
# logs and checkpoints


def process_state() -> Any:
    """Accelerate's process state. Created before any model is loaded, it pins each process of
    `accelerate launch` (or torchrun) to its own GPU, so models loaded on "cuda" land there;
    ACCELERATE_USE_CPU=true makes several CPU processes one group (gloo), as the tests do."""
    from datetime import timedelta  # noqa: PLC0415

    from accelerate import PartialState  # noqa: PLC0415
    from accelerate.utils import parse_flag_from_env  # noqa: PLC0415

    # the other ranks wait while the main one saves, builds a feature bank or fits calibration on a
    # large base: far longer than the default 10-minute collective timeout
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"), timeout=timedelta(hours=3))


def is_main_process() -> bool:
    """True in the process that writes files: the only one, or rank 0 of a launched group."""
    return process_state().is_main_process


def end_process_group() -> None:
    """Close the launched group once the stages are done (a no-op in a single process): a group left
    open can abort the processes at interpreter shutdown, turning a finished run into a failed one."""
    import torch.distributed as dist  # noqa: PLC0415

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def wait_for_everyone() -> None:
    """Barrier between launched processes (a no-op in a single process): files written by the main
    process are complete before any process reads them."""
    process_state().wait_for_everyone()


class JsonlLog:
    """Append-only JSONL log (one JSON object per line, flushed at once); only the main process writes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        if not is_main_process():
            return
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


def optimizer_to_safetensors(optimizer: torch.optim.Optimizer, path: str | Path) -> dict[str, Any]:
    """Save the optimizer's tensor state to safetensors; return the JSON-able rest (param groups, scalars)."""
    from safetensors.torch import save_file  # noqa: PLC0415

    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{name}"] = value
    save_file(tensors, str(path))
    return {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_safetensors(optimizer: torch.optim.Optimizer, path: str | Path, meta: dict[str, Any]) -> None:
    """Inverse of `optimizer_to_safetensors`."""
    from safetensors.torch import load_file  # noqa: PLC0415

    tensors = load_file(str(path))
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for key, value in meta.get("scalars", {}).items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(
    ckpt_dir: str | Path,
    model: Any,
    optimizer: torch.optim.Optimizer | None,
    trainer_state: dict[str, Any],
    tokenizer: Any | None = None,
) -> None:
    """Write a complete checkpoint to `ckpt_dir` atomically (write `<dir>.tmp`, then swap)."""
    ckpt = Path(ckpt_dir)
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp))
    state = dict(trainer_state)
    if optimizer is not None:
        state["optimizer"] = optimizer_to_safetensors(optimizer, tmp / OPTIMIZER_FILE)
    (tmp / TRAINER_STATE).write_text(json.dumps(state, indent=1))
    old = ckpt.with_name(ckpt.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if ckpt.exists():
        os.replace(ckpt, old)
    os.replace(tmp, ckpt)
    if old.exists():
        shutil.rmtree(old)


def read_trainer_state(ckpt_dir: str | Path) -> dict[str, Any] | None:
    """The checkpoint's trainer_state.json, or None if there is no complete checkpoint.

    Falls back to `<dir>.old` when a crash happened between the two renames of `save_checkpoint`.
    """
    ckpt = Path(ckpt_dir)
    for cand in (ckpt, ckpt.with_name(ckpt.name + ".old")):
        f = cand / TRAINER_STATE
        if f.is_file():
            if cand != ckpt:
                os.replace(cand, ckpt)
            return json.loads(f.read_text())
    return None


def export_model_folder(src_dir: str | Path, dst_dir: str | Path, skip: Sequence[str] = (OPTIMIZER_FILE, TRAINER_STATE)) -> None:
    """Copy a checkpoint's model/tokenizer files into `dst_dir`, each file replaced atomically."""
    src, dst = Path(src_dir), Path(dst_dir)
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.is_file() and f.name not in skip:
            tmp = dst / (f.name + ".tmp")
            shutil.copyfile(f, tmp)
            os.replace(tmp, dst / f.name)


SNAPSHOT_LOGS = ("training_log.jsonl", "train_summary.json")
"""Files of the run's model folder a snapshot carries, so a resumed run's log keeps its history."""


def save_snapshot(ckpt_dir: str | Path, log_dir: str | Path, dst_dir: str | Path) -> dict[str, Any]:
    """A committable copy of a checkpoint: weights in fp16, no optimizer state (its moments restart
    when a run is seeded from it: a brief re-warm, against a file a third of the size), the logs."""
    from safetensors.torch import load_file, save_file  # noqa: PLC0415

    src, dst = Path(ckpt_dir), Path(dst_dir)
    state = read_trainer_state(src)
    if state is None:
        raise FileNotFoundError(f"no complete checkpoint in {src}")
    tmp = dst.with_name(dst.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        if f.suffix == ".safetensors" and f.name != OPTIMIZER_FILE:
            tensors = {k: v.half() if v.is_floating_point() else v for k, v in load_file(str(f)).items()}
            save_file(tensors, str(tmp / f.name), metadata={"format": "pt"})
        elif f.is_file() and f.name not in (OPTIMIZER_FILE, TRAINER_STATE):
            shutil.copyfile(f, tmp / f.name)
    for name in SNAPSHOT_LOGS:
        if (Path(log_dir) / name).is_file():
            shutil.copyfile(Path(log_dir) / name, tmp / name)
    state.pop("optimizer", None)
    (tmp / TRAINER_STATE).write_text(json.dumps(state, indent=1))
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)
    return state


def seed_from_snapshot(snapshot: str | Path, ckpt_dir: str | Path, log_dir: str | Path) -> None:
    """Lay a snapshot down as the run's checkpoint (and its logs) when the run has none yet."""
    src, ckpt = Path(snapshot), Path(ckpt_dir)
    if read_trainer_state(src) is None:
        raise FileNotFoundError(f"{src} is not a training snapshot (no {TRAINER_STATE})")
    if read_trainer_state(ckpt) is not None:
        raise FileExistsError(f"{ckpt} already holds a checkpoint: resume it, or pass a fresh --out to seed from {src}")
    shutil.copytree(src, ckpt, ignore=shutil.ignore_patterns(*SNAPSHOT_LOGS))
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    for name in SNAPSHOT_LOGS:
        if (src / name).is_file():
            shutil.copyfile(src / name, Path(log_dir) / name)


def count_parameters(model: torch.nn.Module) -> int:
    """Unique parameters (tied weights counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


class Timer:
    """Seconds spent training, carried across resumes: wall clock, or (`cpu_threads` set) this
    process's CPU seconds divided by that many threads, which other work on the cores does not inflate."""

    def __init__(self, offset: float = 0.0, cpu_threads: int | None = None) -> None:
        self.offset = offset
        self.cpu_threads = cpu_threads
        self.start = self._now()

    def _now(self) -> float:
        return time.process_time() / self.cpu_threads if self.cpu_threads else time.time()

    @property
    def elapsed(self) -> float:
        return self.offset + self._now() - self.start
