"""Device choice and torchrun helpers (rank, world size, reductions) without global state."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from lpld_pipeline.errors import ConfigError


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(device: torch.device) -> bool:
    """Join the torchrun process group if launched by torchrun; returns whether one is active."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True


def resolve_device(name: str) -> torch.device:
    """``auto`` picks this rank's GPU when there is one, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            return torch.device("cuda", local)
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"Expected device 'auto', 'cpu' or 'cuda[:N]'. Got {name!r} instead.") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"Expected a CUDA device for device={name!r}. Got none; use device=cpu or auto.")
    return device


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` across ranks in place (a no-op in a single process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
