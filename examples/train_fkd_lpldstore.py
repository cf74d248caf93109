"""SRe2L / CDA / LPLD's ``train_FKD.py`` with an lpldstore data path: no PyTorch patch, no label files.

The training loop keeps the shape and the flags of the SRe2L family's student training script
(``--batch-size``, ``--gradient-accumulation-steps``, ``-T/--temperature``, ``--epochs``,
``--start-epoch``, ``-j/--workers``, ``--model``, ``--adamw-lr``, ``--adamw-weight-decay``,
``--cos``, ``--fkd-path``, ``--train-dir``/``--val-dir``, ``--output-dir``); only the data path
changes (``examples/train_FKD.diff`` is the edit a user applies to their copy):

* ``--fkd-path`` names a store (``lpldstore import --from sre2l FKD_DIR --images TRAIN_DIR labels.zarr``
  makes one from existing label files) instead of a directory of ``epoch_*/batch_*.tar``;
* the patched ``ImageFolder_FKD_MIX`` + ``RandomSampler`` + ``DataLoader`` become one
  ``lpldstore.PoolDataset``: the images come from the store, replayed with the stored crops,
  flips and CutMix, so ``mix_aug`` goes away and ``--train-dir`` is no longer read;
* ``--label-policy`` says which stored entries an epoch trains on: ``stored`` (SRe2L/CDA: training
  epoch e reads stored epoch e), ``epoch`` (LPLD ``--granularity epoch``: a stored epoch drawn at
  random) or ``ilp`` (LPLD ``--granularity batch``: batches drawn from the whole pool).

Any ``--batch-size`` works (SRe2L insists on the relabel batch size): the loader cuts or joins the
stored batches after CutMix, which is applied to each whole stored batch as the teacher saw it.

    python examples/train_fkd_lpldstore.py --fkd-path labels.zarr --batch-size 1024 \\
        --gradient-accumulation-steps 2 -T 20 --epochs 300 --cos -j 8 --output-dir save/rn18
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

import lpldstore


def get_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser("FKD training from an lpldstore store")
    parser.add_argument("--batch-size", "--batch_size", type=int, default=1024)
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1)
    parser.add_argument("--start-epoch", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("-j", "--workers", type=int, default=4, help="pool loader worker processes")
    parser.add_argument(
        "--train-dir", "--train_dir", default=None, help="not read: the store holds the images"
    )
    parser.add_argument("--val-dir", "--val_dir", default=None, help="ImageFolder of real validation images")
    parser.add_argument("--output-dir", "--output_dir", default="./save/1024")
    parser.add_argument("--cos", action="store_true", help="cosine learning-rate schedule")
    parser.add_argument("--adamw-lr", type=float, default=0.001)
    parser.add_argument("--adamw-weight-decay", type=float, default=0.01)
    parser.add_argument("--model", default="resnet18", help="a torchvision model name")
    parser.add_argument("-T", "--temperature", type=float, default=3.0)
    parser.add_argument(
        "--fkd-path", "--fkd_path", required=True, help="the soft-label store (dir, .zip or URL)"
    )
    parser.add_argument("--label-policy", choices=("stored", "epoch", "ilp"), default="stored")
    parser.add_argument("--fkd-seed", "--fkd_seed", type=int, default=42, help="seed of the epoch/ilp draws")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args(argv)


def build_train_loader(args: argparse.Namespace) -> torch.utils.data.DataLoader:
    """The data path: one PoolDataset instead of ImageFolder_FKD_MIX + RandomSampler + patched fetcher."""
    train_dataset = lpldstore.PoolDataset(
        args.fkd_path,
        policy=args.label_policy,
        seed=args.fkd_seed,
        batch_size=args.batch_size,
        num_workers=args.workers,
        output="triple",  # (images, soft_label, target)
    )
    # Batches are made by the pool loader: batch_size=None, and its own workers do the replay.
    return torch.utils.data.DataLoader(
        train_dataset, batch_size=None, pin_memory=args.device.startswith("cuda")
    )


def check_epochs(args: argparse.Namespace) -> None:
    # SRe2L refuses --epochs beyond the stored ones; the 'stored' policy needs the same.
    with lpldstore.open_store(args.fkd_path) as store:
        stored = int(store.plan.kept_keys[:, 0].max()) + 1
        print(
            f"=> {store.where}: {store.num_entries} entries of {store.plan.batch_size} images, {stored} epochs"
        )
    if args.label_policy == "stored" and args.epochs > stored:
        raise SystemExit(
            f"--epochs {args.epochs} > the {stored} epochs the store holds: use --label-policy epoch or ilp"
        )


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    # No weight decay on biases and normalization parameters (one-dimensional tensors).
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def train(model: nn.Module, args: argparse.Namespace, epoch: int) -> float:
    optimizer, loader = args.optimizer, args.train_loader
    loss_function_kl = nn.KLDivLoss(reduction="batchmean")
    model.train()
    t1 = time.time()
    loader.dataset.set_epoch(epoch)
    total, correct, seen = 0.0, 0, 0
    for batch_idx, batch_data in enumerate(loader):
        images, soft_label, target = batch_data  # CutMix is applied already: no mix_aug
        images = images.to(args.device, non_blocking=True)
        target = target.to(args.device, non_blocking=True)
        soft_label = soft_label.to(args.device, non_blocking=True)  # float32 already

        optimizer.zero_grad()
        assert args.batch_size % args.gradient_accumulation_steps == 0
        small_bs = args.batch_size // args.gradient_accumulation_steps
        if batch_idx == len(loader) - 1:  # the last batch may be short
            accum_step = math.ceil(images.shape[0] / small_bs)
        else:
            accum_step = args.gradient_accumulation_steps
        for accum_id in range(accum_step):
            part = slice(accum_id * small_bs, (accum_id + 1) * small_bs)
            output = model(images[part])
            loss = loss_function_kl(
                F.log_softmax(output / args.temperature, dim=1),
                F.softmax(soft_label[part] / args.temperature, dim=1),
            )
            (loss / args.gradient_accumulation_steps).backward()
            total += loss.item() * len(output)
            correct += int(
                (output.argmax(1) == target[part]).sum()
            )  # top-1 on the mixed images, as SRe2L logs
            seen += len(output)
        optimizer.step()
    print(
        f"TRAIN Iter {epoch}: loss = {total / max(seen, 1):.6f}, Top-1 err = {100 - 100 * correct / max(seen, 1):.2f}, "
        f"train_time = {time.time() - t1:.2f}"
    )
    return total / max(seen, 1)


def validate(model: nn.Module, args: argparse.Namespace, size: int) -> float:
    from torchvision import datasets, transforms

    with lpldstore.open_store(args.fkd_path) as store:
        mean, std = store.dataset.mean, store.dataset.std
    folder = datasets.ImageFolder(
        args.val_dir,
        transforms.Compose(
            [
                transforms.Resize(size),
                transforms.CenterCrop(size),
                transforms.ToTensor(),
                transforms.Normalize(mean, std),
            ]
        ),
    )
    correct = count = 0
    model.eval()
    with torch.no_grad():
        for data, target in torch.utils.data.DataLoader(folder, batch_size=max(args.batch_size // 4, 1)):
            pred = model(data.to(args.device)).argmax(1).cpu()
            correct += int((pred == target).sum())
            count += len(target)
    top1 = 100.0 * correct / max(count, 1)
    print(f"TEST: top-1 = {top1:.2f}%")
    return top1


def main(argv: Sequence[str] | None = None) -> None:
    args = get_args(argv)
    check_epochs(args)
    os.makedirs(args.output_dir, exist_ok=True)
    args.train_loader = build_train_loader(args)
    with lpldstore.open_store(args.fkd_path) as store:
        num_classes, size = store.dataset.num_classes, store.relabel.output_size[0]

    model = torchvision.models.get_model(args.model, weights=None, num_classes=num_classes).to(args.device)
    optimizer = torch.optim.AdamW(parameter_groups(model, args.adamw_weight_decay), lr=args.adamw_lr)

    def schedule(step: int) -> float:  # per epoch: cosine or linear decay to zero, as train_FKD.py
        if step > args.epochs:
            return 0.0
        if args.cos:
            return 0.5 * (1.0 + math.cos(math.pi * step / args.epochs))
        return 1.0 - step / args.epochs

    scheduler = LambdaLR(optimizer, schedule)
    args.optimizer = optimizer
    for _ in range(args.start_epoch):
        scheduler.step()
    for epoch in range(args.start_epoch, args.epochs):
        train(model, args, epoch)
        if args.val_dir and (epoch % 10 == 0 or epoch == args.epochs - 1):
            validate(model, args, size)
        scheduler.step()
        torch.save(
            {"epoch": epoch + 1, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict()},
            os.path.join(args.output_dir, "checkpoint.pth.tar"),
        )
    args.train_loader.dataset.close()


if __name__ == "__main__":
    main()
