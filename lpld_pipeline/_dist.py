"""Device choice and torchrun helpers (rank, world size, reductions) without global state."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

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
    """``auto`` picks this rank's GPU when there is one, else the CPU.

    ``cuda`` (no index) means this rank's GPU too: ``cuda:LOCAL_RANK`` under torchrun, else
    ``cuda:0``; an explicit ``cuda:N`` is taken as given. The chosen GPU becomes the current one,
    which NCCL's collectives and every bare ``.cuda()`` use: without it all ranks of a node would
    share GPU 0.
    """
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        name = "cuda"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"Expected device 'auto', 'cpu' or 'cuda[:N]'. Got {name!r} instead.") from exc
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise ConfigError(f"Expected a CUDA device for device={name!r}. Got none; use device=cpu or auto.")
    if device.index is None:
        device = torch.device("cuda", local_rank())
    if device.index >= torch.cuda.device_count():
        raise ConfigError(
            f"Expected a GPU index below {torch.cuda.device_count()} (the GPUs visible here) for "
            f"device={name!r}. Got {device.index}; launch fewer processes per node or name another GPU."
        )
    torch.cuda.set_device(device)
    return device


def local_rank() -> int:
    """This process's index on its node (torchrun's ``LOCAL_RANK``; 0 outside torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def barrier() -> None:
    """Wait for every rank (a no-op in a single process): what rank 0 wrote is there after it."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def collective_device(tensor: torch.Tensor) -> torch.device:
    """Where ``tensor`` must be for the active process group's collectives.

    NCCL reduces only CUDA tensors (a CPU tensor fails there, after a whole epoch's work); gloo
    takes the tensor where it is.
    """
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return tensor.device


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` across ranks in place (a no-op in a single process), wherever it lives."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        device = collective_device(tensor)
        if device == tensor.device:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        else:
            moved = tensor.to(device)
            dist.all_reduce(moved, op=dist.ReduceOp.SUM)
            tensor.copy_(moved)
    return tensor


@contextlib.contextmanager
def cudnn_autotune(device: torch.device) -> Iterator[None]:
    """cuDNN's algorithm search (``cudnn.benchmark``) for the block, on a GPU only, restored after.

    The stages run fixed shapes for thousands of steps: timing the convolution algorithms once per
    shape pays. Scoped to a stage's run so that the flag does not leak into the caller.
    """
    if device.type != "cuda":
        yield
        return
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous
