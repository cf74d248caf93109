"""Named recipes: the reference hyperparameters of reference/method.md and the CPU ``demo``.

Each stage has a dict of presets; ``RUN_PRESETS`` combines one of each under the same name.
ImageFolder roots and local checkpoints must be given by file or override.
"""

from __future__ import annotations

from lpld_pipeline.config.records import (
    DataConfig,
    RelabelStageConfig,
    RunConfig,
    SqueezeConfig,
    SynthesisConfig,
    TeacherConfig,
    TrainConfig,
)

__all__ = ["RELABEL_PRESETS", "RUN_PRESETS", "SQUEEZE_PRESETS", "SYNTHESIS_PRESETS", "TRAIN_PRESETS"]

# Presets follow reference/method.md (sections 1.1-1.2); ImageFolder roots and local checkpoints
# must be given by file or override. ``demo`` runs on a CPU in a few minutes: its teacher learns
# from relabel's views and its statistics are collected under them, as the reference squeeze does.
SQUEEZE_PRESETS: dict[str, SqueezeConfig] = {
    "demo": SqueezeConfig(
        data=DataConfig(name="digits", image_size=16, augment=True),
        teacher=TeacherConfig(
            arch="tiny_resnet", weights="train", normalization="data", train_epochs=30, train_augment=True
        ),
    ),
    "imagenet1k": SqueezeConfig(
        data=DataConfig(name="imagefolder", image_size=224, augment=True, batch_size=256, num_workers=8),
        teacher=TeacherConfig(arch="resnet18", weights="pretrained", normalization="imagenet"),
    ),
    "tiny": SqueezeConfig(
        data=DataConfig(
            name="imagefolder",
            image_size=64,
            augment=True,
            eval_transform="none",
            batch_size=256,
            num_workers=8,
        ),
        teacher=TeacherConfig(arch="resnet18", weights="", small_stem=True, normalization="tiny_imagenet"),
    ),
    "imagenet21k": SqueezeConfig(
        data=DataConfig(name="imagefolder", image_size=224, augment=True, batch_size=256, num_workers=8),
        teacher=TeacherConfig(arch="resnet18", weights="", normalization="none"),
    ),
}

SYNTHESIS_PRESETS: dict[str, SynthesisConfig] = {
    "demo": SynthesisConfig(ipc=10, iterations=1000, lr=0.1, r_bn=0.05, jitter=4, groups_per_batch=10),
    "imagenet1k": SynthesisConfig(
        ipc=10,
        iterations=4000,
        lr=0.25,
        r_bn=0.01,
        jitter=32,
        groups_per_batch=50,
        amp="bf16",
        channels_last=True,
        image_format="jpeg",
    ),
    "tiny": SynthesisConfig(
        ipc=50,
        iterations=4000,
        lr=0.1,
        r_bn=0.05,
        jitter=4,
        jitter_range="symmetric",
        group_size=100,
        groups_per_batch=20,
        image_format="jpeg",
    ),
    "imagenet21k": SynthesisConfig(
        ipc=10,
        iterations=2000,
        lr=0.05,
        r_bn=0.25,
        jitter=32,
        groups_per_batch=50,
        amp="bf16",
        channels_last=True,
        image_format="jpeg",
    ),
}


# Relabel and training recipes of reference/method.md 1.3-1.4. ``demo``: digits, IPC 10, 10x.
RELABEL_PRESETS: dict[str, RelabelStageConfig] = {
    "demo": RelabelStageConfig(batch_size=10, epochs=200, ratio=10, mix="cutmix", plan_seed=42),
    "imagenet1k": RelabelStageConfig(batch_size=128, epochs=300, ratio=40, mix="cutmix", channels_last=True),
    "tiny": RelabelStageConfig(batch_size=64, epochs=100, ratio=40, mix="none"),
    "imagenet21k": RelabelStageConfig(
        # The 21K relabel crops and cuts out but never flips (reference/method.md 1.3).
        batch_size=32,
        epochs=300,
        ratio=40,
        mix="none",
        cutout=True,
        flip_prob=0.0,
        channels_last=True,
    ),
}

TRAIN_PRESETS: dict[str, TrainConfig] = {
    "demo": TrainConfig(
        model="tiny_resnet",
        width=16,
        epochs=200,
        temperature=20.0,
        t2=True,
        optimizer="adamw",
        lr=1e-3,
        weight_decay=0.01,
        val=DataConfig(name="digits"),
        val_interval=50,
    ),
    "imagenet1k": TrainConfig(
        model="resnet18",
        epochs=300,
        batch_size=128,
        temperature=20.0,
        optimizer="adamw",
        lr=1e-3,
        weight_decay=0.01,
        schedule="cosine",
        val=DataConfig(name="imagefolder", image_size=224, num_workers=8),
        num_workers=8,
        device_loader=False,
        channels_last=True,
    ),
    "tiny": TrainConfig(
        model="resnet18",
        small_stem=True,
        epochs=100,
        batch_size=64,
        temperature=20.0,
        t2=True,
        optimizer="sgd",
        lr=0.2,
        momentum=0.9,
        weight_decay=1e-4,
        schedule="warmup_cosine",
        warmup_epochs=5,
        val=DataConfig(name="imagefolder", image_size=64, eval_transform="none", num_workers=8),
    ),
    "imagenet21k": TrainConfig(
        model="resnet18",
        epochs=300,
        batch_size=32,
        temperature=20.0,
        logit_smoothing=0.2,
        optimizer="adamw",
        lr=2e-3,
        weight_decay=0.01,
        val=DataConfig(name="imagefolder", image_size=224, eval_transform="resize", num_workers=8),
        val_interval=50,
        num_workers=8,
        device_loader=False,
        channels_last=True,
    ),
}

RUN_PRESETS: dict[str, RunConfig] = {
    name: RunConfig(
        out=f"runs/{name}",
        squeeze=SQUEEZE_PRESETS[name],
        synthesize=SYNTHESIS_PRESETS[name],
        relabel=RELABEL_PRESETS[name],
        train=TRAIN_PRESETS[name],
        threads=1 if name == "demo" else 0,
    )
    for name in ("demo", "imagenet1k", "tiny", "imagenet21k")
}
