"""Collecting what the routers do on a set of labelled prompts: the data behind calibration
fitting, routing evaluation and the reliability diagrams.

Levels (what the page shows, and what is measured):
- token level: each prompt token after the template prefix every prompt shares (BOS, the user
  marker): its per-layer weights p_ℓ,t;
- prompt level: a prompt's weights averaged over all those tokens and all layers — the run-level
  mean the app's summaries show — then, when calibrated, passed through the pooled calibrator
  (`CalibrationStack.pool`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from alignx_demo.config import RoutingSettings
from alignx_demo.data.records import AxisExample
from alignx_demo.data.templates import encode_prompt, template_prefix_length
from alignx_demo.modeling.mocae import MoCaEModel


@dataclass
class RoutingData:
    """Token-level router outputs: logits (L, N, K), features (L, N, D), weights used (L, N, K),
    labels (N,), example index (N,), and each token's position among its prompt's tokens (N,)."""

    logits: torch.Tensor
    features: torch.Tensor
    weights: torch.Tensor
    labels: torch.Tensor
    example: torch.Tensor
    position: torch.Tensor | None = None

    def subset(self, rows: torch.Tensor) -> RoutingData:
        """The rows (token indices) given, e.g. the tokens of some prompts."""
        return RoutingData(
            self.logits[:, rows], self.features[:, rows], self.weights[:, rows], self.labels[rows], self.example[rows],
            None if self.position is None else self.position[rows],
        )

    def split_by_prompt(self, fraction: float, seed: int = 0) -> tuple[RoutingData, RoutingData]:
        """Two parts whose prompts do not overlap: about `fraction` of the prompts, and the rest."""
        prompts = torch.unique(self.example)
        order = prompts[torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed))]
        first = order[: max(1, int(round(len(order) * fraction)))]
        mask = torch.isin(self.example, first)
        return self.subset(mask.nonzero().squeeze(1)), self.subset((~mask).nonzero().squeeze(1))


@torch.no_grad()
def collect_routing(
    mocae: MoCaEModel, tokenizer: Any, examples: list[AxisExample], *, max_len: int,
    tokens_per_example: int | None = None, routing: RoutingSettings | None = None,
) -> RoutingData:
    """Router logits, features and weights of each example's prompt tokens after the shared
    template prefix (all of them; or, with `tokens_per_example`, that many evenly spaced, the last
    always included). One forward per prompt, uncalibrated soft routing unless told otherwise."""
    device = next(mocae.model.parameters()).device
    routing = routing or RoutingSettings(mode="soft", calibrated=False)
    skip = template_prefix_length(tokenizer)
    logits, features, weights, labels, owner, position = [], [], [], [], [], []
    for i, example in enumerate(examples):
        ids = encode_prompt(tokenizer, example.prompt)
        start = skip if len(ids) <= max_len else 0
        ids = ids[-max_len:]
        with mocae.routed(routing), mocae.record(features=True) as record:
            mocae(input_ids=torch.tensor([ids], device=device))
        n = len(ids)
        first = min(start, n - 1)
        if tokens_per_example is None:
            pick = torch.arange(first, n)
        else:
            pick = torch.linspace(first, n - 1, min(tokens_per_example, n - first)).round().long().unique()
        logits.append(torch.stack([z[0][0, pick] for z in record.logits]).cpu())
        features.append(torch.stack([f[0][0, pick] for f in record.features]).cpu())
        weights.append(torch.stack([w[0][0, pick] for w in record.weights]).cpu())
        labels += [mocae.axes.index(example.axis)] * len(pick)
        owner += [i] * len(pick)
        position += (pick - first).tolist()
    cat = lambda parts: torch.cat(parts, 1).float()  # noqa: E731
    return RoutingData(cat(logits), cat(features), cat(weights), torch.tensor(labels), torch.tensor(owner), torch.tensor(position))


def prompt_mean(p: torch.Tensor, example: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt-level routing: each prompt's mean of the token rows p (N, K), prompts in id order, and
    for each token row the index of its prompt among them."""
    ids, inverse = torch.unique(example, return_inverse=True)
    sums = torch.zeros(len(ids), p.shape[-1], dtype=p.dtype).index_add_(0, inverse, p)
    return sums / torch.bincount(inverse, minlength=len(ids))[:, None], inverse


def prompt_labels(data: RoutingData) -> torch.Tensor:
    """One axis label per prompt, prompts in id order (as `prompt_mean` orders them)."""
    _, inverse = torch.unique(data.example, return_inverse=True)
    return torch.zeros(int(inverse.max()) + 1, dtype=torch.long).scatter_(0, inverse, data.labels)
