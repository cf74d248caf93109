"""A plain torchvision / timm training loop on a store, with mixed precision and DDP under torchrun.

    torchrun --nproc_per_node=8 examples/train_ddp_amp.py labels.zarr --model resnet18 \\
        --epochs 300 --batch-size 128 -T 20 --workers 6

One process per GPU (or, on a CPU, per core group with the gloo backend). ``PoolDataset`` reads the
rank and world size from ``torch.distributed``: each rank iterates its own share of every epoch's
stored batches, cut to ``--batch-size`` per rank. Mixed precision: float16 with a gradient scaler
on CUDA, bfloat16 on the CPU (``--no-amp`` for float32).

Losses (``--loss``): ``kl`` (SRe2L: KL divergence to the stored logits at temperature T), ``mse_gt``
(G-VBSM: MSE to the stored logits plus ``--ce-weight`` x cross-entropy with the hard labels) and
``kl_mixed_ce`` (KL plus a CutMix cross-entropy: each sample's hard label weighted by the share of
its pixels that are its own, ``batch.mix_lam``, and the pasted image's label by the rest).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import lpldstore


def get_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser("train a student from an lpldstore store (torchrun-ready)")
    parser.add_argument("store", help="the soft-label store: directory, .zip or URL")
    parser.add_argument(
        "--model", default="resnet18", help="a torchvision model, or a timm one if timm is installed"
    )
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=128, help="per rank")
    parser.add_argument("-T", "--temperature", type=float, default=20.0)
    parser.add_argument("--loss", choices=("kl", "mse_gt", "kl_mixed_ce"), default="kl")
    parser.add_argument("--ce-weight", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--policy", choices=("ilp", "epoch", "stored", "sequential"), default="ilp")
    parser.add_argument("--workers", type=int, default=4, help="pool loader worker processes per rank")
    parser.add_argument("--no-amp", dest="amp", action="store_false", help="train in float32")
    parser.add_argument("--seed", type=int, default=0, help="seeds the model's initialization")
    parser.add_argument("--out", default=None, help="write checkpoint.pt here (rank 0)")
    return parser.parse_args(argv)


def build_model(name: str, num_classes: int) -> nn.Module:
    if name in torchvision.models.list_models():
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    import timm  # only needed for models torchvision does not have

    return timm.create_model(name, pretrained=False, num_classes=num_classes)


def loss_of(args: argparse.Namespace, out: torch.Tensor, batch: lpldstore.PoolBatch) -> torch.Tensor:
    out, soft = out.float(), batch.logits
    t = args.temperature
    kl = F.kl_div(
        F.log_softmax(out / t, 1), F.log_softmax(soft / t, 1), reduction="batchmean", log_target=True
    )
    if args.loss == "kl":
        return kl * t * t
    assert batch.labels is not None
    assert batch.partner_labels is not None
    if args.loss == "mse_gt":
        return F.mse_loss(out, soft) + args.ce_weight * F.cross_entropy(out, batch.labels)
    lam = batch.mix_lam
    mixed_ce = lam * F.cross_entropy(out, batch.labels, reduction="none") + (1 - lam) * F.cross_entropy(
        out, batch.partner_labels, reduction="none"
    )
    return kl * t * t + args.ce_weight * mixed_ce.mean()


def main(argv: Sequence[str] | None = None) -> None:
    args = get_args(argv)
    distributed = "WORLD_SIZE" in os.environ
    cuda = torch.cuda.is_available()
    if distributed:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device(f"cuda:{torch.cuda.current_device()}" if cuda else "cpu")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)

    # Built after init_process_group: each rank then iterates its own share.
    dataset = lpldstore.PoolDataset(
        args.store,
        policy=args.policy,
        seed=0,
        batch_size=args.batch_size,
        num_workers=args.workers,
        labels=args.loss != "kl",
        output="batch",
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, pin_memory=cuda)
    with lpldstore.open_store(args.store) as store:
        num_classes = store.dataset.num_classes

    torch.manual_seed(args.seed)  # DDP broadcasts rank 0's initial weights; this makes them repeatable
    model = build_model(args.model, num_classes).to(device)
    if distributed:
        model = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    amp_dtype = torch.float16 if cuda else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda", enabled=args.amp and cuda)

    samples = 0
    loss = torch.zeros(())
    for epoch in range(args.epochs):
        dataset.set_epoch(epoch)
        model.train()
        for batch in loader:
            batch = batch.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp):
                out = model(batch.images)
            loss = loss_of(args, out, batch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            samples += len(batch)
        if rank == 0:
            print(f"epoch {epoch}: loss {loss.item():.4f}", flush=True)
    print(
        f"rank {rank} of {world}: {samples} samples in {args.epochs} epochs, last loss {loss.item():.4f}",
        flush=True,
    )
    if args.out and rank == 0:
        os.makedirs(args.out, exist_ok=True)
        module = model.module if isinstance(model, DistributedDataParallel) else model
        torch.save(module.state_dict(), os.path.join(args.out, "checkpoint.pt"))
    dataset.close()
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
