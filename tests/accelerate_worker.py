"""Run by `accelerate launch --num_processes 2` from test_pipeline: the shared fine-tuning loop must
average gradients across processes, so routers trained on different batches end up identical."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from conftest import VOCAB, randomize_mocae, tiny_model  # noqa: E402

from alignx_demo.config import MoCaEConfig, RoutingSettings  # noqa: E402
from alignx_demo.modeling.mocae import MoCaEModel  # noqa: E402
from alignx_demo.training.common import end_process_group  # noqa: E402
from alignx_demo.training.finetune import EncodedSet, train_loop  # noqa: E402


def main() -> None:
    mocae = MoCaEModel(tiny_model("llama"), MoCaEConfig(rank=4))
    randomize_mocae(mocae)
    gen = torch.Generator().manual_seed(0)
    ids = [torch.randint(5, VOCAB, (12,), generator=gen).tolist() for _ in range(12)]
    data = EncodedSet(ids, [6] * 12, [i % 3 for i in range(12)], prefix=1)
    train_loop(mocae, list(mocae.routers.parameters()), data, routing=RoutingSettings(calibrated=False), steps=4,
               batch_size=2, lr=0.05, pad_id=0, balanced=True, loss_weights={"route": 1.0}, progress=False)
    flat = torch.cat([p.detach().flatten() for p in mocae.routers.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    moved = float((flat.abs() > 0).float().mean())
    same = all(torch.equal(g, gathered[0]) for g in gathered)
    print(f"RESULT world={dist.get_world_size()} in_sync={same} moved={moved:.2f}", flush=True)
    end_process_group()


if __name__ == "__main__":
    main()
