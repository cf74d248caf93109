from __future__ import annotations

import torch
from torch import nn

from lpld_pipeline import ClassBNStats, Teacher, TeacherSpec, TinyResNet, batchnorm_layers


def make_tiny_teacher(num_classes: int = 3, width: int = 4, seed: int = 0) -> Teacher:
    """A random TinyResNet with non-trivial BN running statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TinyResNet(num_classes, width)
    for _, m in batchnorm_layers(model):
        assert isinstance(m, nn.BatchNorm2d)
        c = m.num_features
        assert m.running_mean is not None
        assert m.running_var is not None
        m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
        m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
        m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
        m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)
    spec = TeacherSpec(arch="tiny_resnet", num_classes=num_classes, width=width, source="random")
    return Teacher(model, spec)


def random_class_stats(teacher: Teacher, image_size: int, seed: int = 1) -> ClassBNStats:
    """Random per-class targets for every BN layer of ``teacher``."""
    g = torch.Generator().manual_seed(seed)
    k = teacher.spec.num_classes
    mean, var, count = {}, {}, {}
    for name, m in batchnorm_layers(teacher.model):
        assert isinstance(m, nn.BatchNorm2d)
        mean[name] = torch.randn(k, m.num_features, generator=g) * 0.5
        var[name] = torch.rand(k, m.num_features, generator=g) + 0.5
        count[name] = torch.full((k,), 100, dtype=torch.long)
    return ClassBNStats(
        layers=tuple(mean),
        mean=mean,
        var=var,
        count=count,
        images_per_class=torch.full((k,), 10, dtype=torch.long),
        class_names=tuple(f"c{i}" for i in range(k)),
        teacher=teacher.spec,
        teacher_sha256=teacher.sha256(),
        image_size=image_size,
    )
