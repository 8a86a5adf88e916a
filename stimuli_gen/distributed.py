"""Several GPUs or nodes with ``torchrun``: process-group setup from torchrun's environment,
sharding of the collection, and the exact merge of the per-rank exemplar lists.

Sharding is strided (rank r takes images r, r+W, r+2W, ...), which balances folders of different
image sizes. Every list entry carries its global image index and the merge sorts by (value,
index), so the merged lists are exactly those of a one-process run.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from stimuli_gen.topk import ExtremeLists, merge_extremes


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_from_env(device: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT);
    a plain run is rank 0 of 1. Returns the info and this rank's device (cuda:LOCAL_RANK on GPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    info = DistInfo(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device} requested but CUDA is not available here (use --device cpu or auto)")
    if use_cuda:
        dev = torch.device("cuda", info.local_rank) if device in ("auto", "cuda") else torch.device(device)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu" if device == "auto" else device)
    if info.enabled and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(hours=2))
    return info, dev


def shard(indices: list[int], info: DistInfo) -> list[int]:
    return indices[info.rank :: info.world_size]


def gather_objects(obj, info: DistInfo) -> list:
    """``obj`` of every rank, in rank order (the object itself when not distributed)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def merge_across_ranks(lists: ExtremeLists, info: DistInfo) -> ExtremeLists:
    """Exact merge of every rank's lists; every rank gets the merged result (on the CPU)."""
    states = gather_objects(lists.state_dict(), info)
    return merge_extremes([ExtremeLists.from_state_dict(s) for s in states])


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
