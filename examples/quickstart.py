"""Quickstart: relabel distilled images into a pruned soft-label store, then train a student from it.

Random images and a random teacher stand in for yours; it runs on a CPU in seconds and writes
``labels.zarr`` in the current directory. (README.md shows this file; tests/test_examples.py runs it.)
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import lpldstore as ls

# The distilled images: uint8 (N, H, W, 3) and their classes. Yours come from synthesis.
num_classes, ipc, size = 10, 4, 32
rng = np.random.default_rng(0)
images = rng.integers(0, 256, size=(num_classes * ipc, size, size, 3), dtype=np.uint8)
labels = np.repeat(np.arange(num_classes), ipc)
mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def convnet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    )


teacher = convnet().eval()  # yours: a trained classifier
# Relabel contract (`lpld verify --teacher`): the teacher gets [0, 1] pixels and normalizes them itself.
mean_t, std_t = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)

# 20 augmentation epochs of batches of 8, pruned 4x: only the 25 kept entries are ever computed.
plan = ls.PruningPlan(num_images=len(images), batch_size=8, epochs=20, ratio=4, strategy="prefix")
dataset = ls.DatasetInfo(
    name="random-demo",
    num_classes=num_classes,
    num_images=len(images),
    image_shape=(size, size, 3),
    ipc=ipc,
    mean=mean,
    std=std,
)
relabel = ls.RelabelConfig(output_size=(size, size), teacher="random-convnet")

pixels = torch.from_numpy(images)
with ls.StoreWriter.create(
    "labels.zarr", plan=plan, images=images, labels=labels, dataset=dataset, relabel=relabel
) as writer:
    for e, b in writer.todo():  # entry (epoch e, batch b); after a crash: ls.StoreWriter.open(...).todo()
        idx = plan.batch_indices(e, b)
        params = ls.draw_params(relabel, (size, size), len(idx), e, b)
        x = ls.apply_params(pixels[idx], params, relabel, mean=(0, 0, 0), std=(1, 1, 1))
        with torch.no_grad():
            logits = teacher((x - mean_t) / std_t)
        writer.write(e, b, logits=logits.numpy(), params=params)

with ls.open_store("labels.zarr") as store:  # or "labels.zip", or a URL
    entry = store.entry(0, 1)  # indices, augmentation record (entry.params), float16 logits
    print(f"{store.num_entries} entries; entry (0, 1) holds images {entry.indices.tolist()}")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)) * T^2, batch mean."""
    log_p = F.log_softmax(student_logits / temperature, dim=1)
    log_q = F.log_softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * temperature**2


# Training: LPLD's improved label pool, the stored augmentations replayed exactly.
student = convnet()  # the loader normalizes with the store's mean/std
optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
loader = ls.PoolLoader("labels.zarr", policy="ilp", seed=0, batch_size=16)
for epoch in range(3):
    loader.set_epoch(epoch)
    for batch in loader:  # batch.images (normalized, CutMix applied), batch.logits (float32)
        loss = kd_loss(student(batch.images), batch.logits, temperature=4.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"epoch {epoch}: KD loss {loss.item():.4f}")
