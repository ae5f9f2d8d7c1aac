"""The fine-tuning loop shared by Stage 1 (experts), Stage 2 (routers) and the SFT baselines.

Examples are encoded in the chat format (`templates.encode_example`, optionally with an axis
preamble), right-padded into batches, and the LM loss is taken on response tokens only. The loop
trains the given parameters of a MoCaEModel under given routing settings, so the same code trains
one expert (routing forced to that expert), the routers (soft routing, plus a routing loss), or a
baseline adapter.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from alignx_demo.config import RoutingSettings
from alignx_demo.data.batches import EncodedSet, encode_set, make_batch  # noqa: F401  (re-exported for training)
from alignx_demo.modeling.mocae import MoCaEModel
from alignx_demo.training.common import JsonlLog, lr_at, process_state


def balanced_indices(data: EncodedSet, rng: np.random.Generator, batch_size: int) -> list[int]:
    """A batch with each axis equally likely (within each axis, examples uniformly)."""
    labels = np.array(data.axes)
    present = [np.flatnonzero(labels == k) for k in np.unique(labels)]
    return [int(rng.choice(present[int(rng.integers(len(present)))])) for _ in range(batch_size)]


def _span_mean(p: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of weights p (L, B, T, K) over the layers and the masked tokens (B, T): (B, K)."""
    m = mask.to(p.dtype)[None, :, :, None].expand(p.shape[0], -1, -1, 1)
    return (p * m).sum(dim=(0, 2)) / m.sum(dim=(0, 2)).clamp_min(1e-8)


def routing_losses(
    weights: list[torch.Tensor], mask: torch.Tensor, axis: torch.Tensor, spans: Sequence[torch.Tensor] = ()
) -> dict[str, torch.Tensor]:
    """Routing cross-entropy, entropy and balance terms from recorded weights (per layer (B,T,K)).

    - route: CE of the token-averaged weights (over tokens and layers) against the example's axis,
      as in H3Fusion. Without `spans` the average runs over all non-padding tokens; with spans
      (masks (B,T): the prompt after the shared template prefix, and the response) it is the mean
      of one CE per span, so the prompt alone must already route right — that routing is what
      produces the first answer tokens, and what the app shows for the prompt — and a distinctive
      answer (a refusal) cannot carry the whole loss;
    - entropy: mean per-token routing entropy (small weight: decisive routing per token);
    - balance: KL(batch-mean weights ‖ uniform) (small weight: no expert starved).
    """
    p = torch.stack(weights)  # (L, B, T, K)
    mean_p = _span_mean(p, mask)  # (B, K), sums to 1
    terms = []
    for span in spans or (mask,):
        rows = span.sum(1) > 0
        if bool(rows.any()):
            terms.append(F.nll_loss(_span_mean(p, span)[rows].clamp_min(1e-8).log(), axis[rows]))
    route = torch.stack(terms).mean()
    token_entropy = -(p * p.clamp_min(1e-8).log()).sum(-1)
    m = mask.to(p.dtype)[None].expand(p.shape[0], -1, -1)  # (L, B, T)
    entropy = (token_entropy * m).sum() / m.sum()
    usage = mean_p.mean(0)
    balance = (usage * (usage.clamp_min(1e-8) * p.shape[-1]).log()).sum()
    return {"route": route, "entropy": entropy, "balance": balance}


def train_loop(
    mocae: MoCaEModel,
    params: list[torch.nn.Parameter],
    data: EncodedSet,
    *,
    routing: RoutingSettings,
    steps: int,
    batch_size: int,
    lr: float,
    pad_id: int,
    seed: int = 0,
    balanced: bool = False,
    loss_weights: dict[str, float] | None = None,
    log: JsonlLog | None = None,
    desc: str = "train",
    progress: bool = True,
) -> dict[str, Any]:
    """Train `params` for `steps` steps; returns a summary (steps, seconds, first/last losses).

    `loss_weights` adds routing terms (keys of `routing_losses`) to the LM loss; weight decay is
    0 so parameters that receive no gradient (the other experts' blocks) do not move. Under
    `accelerate launch` the model is wrapped for data parallelism (each process draws its own
    batches, gradients are averaged; unused parameters allowed, since one expert trains at a time);
    in a single process Accelerate changes nothing.
    """
    from accelerate import Accelerator  # noqa: PLC0415
    from accelerate.utils import DistributedDataParallelKwargs  # noqa: PLC0415

    if not len(data):
        raise ValueError(f"{desc}: no training examples")
    loss_weights = {k: v for k, v in (loss_weights or {}).items() if v}
    device = next(mocae.model.parameters()).device
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    process_state()
    accelerator = Accelerator(device_placement=False, kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    model, optimizer = accelerator.prepare(mocae, optimizer)
    rng = np.random.default_rng(seed + accelerator.process_index)
    mocae.train()
    start, history = time.time(), []
    bar = tqdm(range(steps), desc=desc, disable=not progress or not accelerator.is_main_process, leave=False)
    step = 0
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step / max(steps, 1), step, lr=lr, warmup_steps=max(1, steps // 20))
        indices = balanced_indices(data, rng, batch_size) if balanced else rng.integers(len(data), size=batch_size).tolist()
        batch = {k: v.to(device) for k, v in make_batch(data, indices, pad_id).items()}
        recording = mocae.record(detach=False) if loss_weights else nullcontext()
        answered = bool((batch["labels"] != -100).any())  # a batch of prompt-only examples has no LM loss
        summary_span = batch["attention_mask"] - batch["response_mask"]  # the prompt, template included
        with mocae.routed(routing), mocae.prompt_span(summary_span), recording as record:
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        labels=batch["labels"] if answered else None)
        losses = {"lm": out.loss if answered else out.logits.sum() * 0.0}
        if record is not None:
            extra = routing_losses([w[0] for w in record.weights], batch["attention_mask"], batch["axis"],
                                   (batch["prompt_mask"], batch["response_mask"]))
            losses.update({k: extra[k] for k in loss_weights})
        total = losses["lm"] + sum(loss_weights[k] * losses[k] for k in loss_weights)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(total)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        values = {k: round(float(v.detach()), 4) for k, v in losses.items()}
        history.append(values)
        bar.set_postfix(values)
        if log is not None and (step % 10 == 0 or step == steps - 1):
            log.write({"stage": desc, "step": step, **values, "seconds": round(time.time() - start, 1)})
    mocae.eval()
    window = max(1, min(10, len(history) // 5))

    def mean_of(rows: list[dict[str, float]]) -> dict[str, float]:
        return {k: round(sum(r[k] for r in rows) / len(rows), 4) for k in rows[0]}

    return {
        "steps": step + 1,
        "seconds": round(time.time() - start, 1),
        "first_losses": mean_of(history[:window]),
        "last_losses": mean_of(history[-window:]),
        "finite": all(math.isfinite(v) for r in history for v in r.values()),
    }


@torch.no_grad()
def response_loss(mocae: MoCaEModel, data: EncodedSet, routing: RoutingSettings, pad_id: int, batch_size: int = 8) -> float:
    """Mean LM loss per response token of `data` under `routing` (held-out loss of an adapter)."""
    device = next(mocae.model.parameters()).device
    total, count = 0.0, 0
    for first in range(0, len(data), batch_size):
        batch = {k: v.to(device) for k, v in make_batch(data, range(first, min(first + batch_size, len(data))), pad_id).items()}
        with mocae.routed(routing):
            with mocae.prompt_span(batch["attention_mask"] - batch["response_mask"]):
                logits = mocae(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100, reduction="sum")
        total, count = total + float(loss), count + int((labels != -100).sum())
    return total / max(count, 1)
