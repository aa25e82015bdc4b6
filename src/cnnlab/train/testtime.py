"""Top-1/top-5 error with the papers' test-time methods: centre crop, 10-crop, dense.

Each image becomes views (cnnlab.data.views.TestTime), the network gives class scores for each
view, and the image's class posteriors are the softmax of each view's scores averaged over its
views, as the papers average them:

    Krizhevsky et al. 2012, section 4.1: "averaging the predictions made by the network's
        softmax layer on the ten patches".
    Simonyan & Zisserman 2014, section 3.2: the class score map is spatially averaged (before
        the softmax: `fully_convolutional`), then "the soft-max class posteriors of the
        original and flipped images are averaged"; section 4.2, several scales: "averaging the
        resulting class posteriors".
    He et al. 2015, section 3.4: 10-crop, and "average the scores at multiple scales" in the
        fully convolutional form of VGG.

So posteriors (softmax outputs), not logits, are averaged over views and scales; each view
weighs the same, so each scale weighs the same in dense evaluation. (`cnnlab eval --tta flip`
on CIFAR averages logits instead; a separate figure.)

These functions know nothing of datasets: `evaluate_views` takes any iterable of (image, label)
pairs, uint8 C x H x W images of any sizes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cnnlab.data.views import TestTime
from cnnlab.models.dense import fully_convolutional
from cnnlab.train.hardware import autocast

__all__ = ["ViewsResult", "evaluate_views", "scores"]

Normalizer = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class ViewsResult:
    """Errors in percent over `images` images, each the average over `views_per_image` views."""

    top1_error: float
    top5_error: float  # top-k with k = min(5, number of classes)
    loss: float  # mean of -log(averaged posterior of the true class)
    images: int
    views_per_image: int
    method: str  # TestTime.describe(): which views, which source


def _posteriors(
    net: nn.Module,
    views: Tensor,
    normalize: Normalizer,
    batch_size: int,
    precision: str,
    memory_format: torch.memory_format,
) -> Tensor:
    """Softmax of the network's scores for each of V views of one size: V x K float32."""
    out = []
    for chunk in views.split(batch_size):
        x = normalize(chunk).contiguous(memory_format=memory_format)
        with autocast(x.device, precision):
            logits = net(x)
        out.append(logits.float().softmax(dim=1))
    return torch.cat(out)


@torch.no_grad()
def scores(
    net: nn.Module,
    views: Tensor | Sequence[Tensor],
    normalize: Normalizer,
    *,
    batch_size: int = 250,
    precision: str = "fp32",
    memory_format: torch.memory_format = torch.contiguous_format,
) -> Tensor:
    """Class posteriors of one image: the softmax of each view's scores, averaged over views.

    Args:
        net: the network as it should run the views (in eval mode; for dense views, its
            `fully_convolutional` form).
        views: uint8 V x C x h x w, or several such stacks of different sizes (dense
            evaluation at several scales); all views weigh the same.
        normalize: uint8 views -> float network input (e.g. cnnlab.data.Normalize, per channel).
        batch_size: most views per forward pass.
        precision: "fp32" or "bf16" (autocast).

    Returns:
        float32 (num_classes,) on the views' device, summing to 1.
    """
    stacks = [views] if isinstance(views, Tensor) else list(views)
    if not stacks or any(s.dim() != 4 or s.shape[0] == 0 for s in stacks):
        raise ValueError("views must be one or more non-empty V x C x h x w stacks")
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    p = [_posteriors(net, s, normalize, batch_size, precision, memory_format) for s in stacks]
    return torch.cat(p).mean(dim=0)


@torch.no_grad()
def evaluate_views(
    net: nn.Module,
    items: Iterable[tuple[Tensor, int]],
    method: TestTime,
    normalize: Normalizer,
    *,
    device: torch.device | str,
    batch_size: int = 250,
    precision: str = "fp32",
    memory_format: torch.memory_format = torch.contiguous_format,
) -> ViewsResult:
    """Top-1 and top-5 error of `net` with a test-time method, over (image, label) pairs.

    Each image (uint8 C x H x W, any size) is moved to `device`, cut into `method`'s views
    there, and classified by the posteriors averaged over its views (see the module docstring).
    center and 10crop run the network as it is, several images' views per forward pass; dense
    runs `fully_convolutional(net)` on each image's views, one scale at a time.

    Args:
        net: a classification network; put in eval mode here, its mode restored after.
        items: (image, label) pairs, label an int (or a 0-d tensor) in 0 .. num_classes - 1.
        method: which views (TestTime.center(), .ten_crop(), .dense(scales), .parse(...)).
        normalize: uint8 views -> float network input, on `device` (e.g. cnnlab.data.Normalize
            with per-channel statistics).
        device: where the views are made and the network runs (the network must be there).
        batch_size: most views per forward pass.
        precision: "fp32" or "bf16" (autocast).

    Raises:
        ValueError: no images, a label out of range, or an image the method cannot cut.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    device = torch.device(device)
    was_training = net.training
    net.eval()
    runner = fully_convolutional(net) if method.name == "dense" else net
    per_image = method.views_per_image
    images_per_batch = max(1, batch_size // per_image)
    run = dict(normalize=normalize, precision=precision, memory_format=memory_format)
    totals = [0, 0, 0.0, 0]  # top-1 correct, top-k correct, -log p(label), images
    pending_views: list[Tensor] = []
    pending_labels: list[int] = []

    def count(posteriors: Tensor, labels: list[int]) -> None:
        k = min(5, posteriors.shape[1])
        y = torch.tensor(labels, device=posteriors.device)
        if int(y.min()) < 0 or int(y.max()) >= posteriors.shape[1]:
            bad = next(v for v in labels if not 0 <= v < posteriors.shape[1])
            raise ValueError(f"label {bad} is out of range for {posteriors.shape[1]} classes")
        topk = posteriors.topk(k, dim=1).indices
        totals[0] += int((topk[:, 0] == y).sum())
        totals[1] += int((topk == y[:, None]).any(dim=1).sum())
        p_true = posteriors.gather(1, y[:, None]).clamp_min(torch.finfo(torch.float32).tiny)
        totals[2] += float(-p_true.log().sum())
        totals[3] += len(labels)

    def flush() -> None:
        # center / 10crop: every view is crop x crop, so many images share a forward pass.
        views = torch.cat(pending_views)
        p = _posteriors(runner, views, batch_size=batch_size, **run)  # (images * V) x K
        count(p.view(len(pending_labels), per_image, -1).mean(dim=1), pending_labels)
        pending_views.clear()
        pending_labels.clear()

    try:
        for image, label in items:
            stacks = method.views(image.to(device, non_blocking=True))
            label = int(label)
            if method.name == "dense":
                count(scores(runner, stacks, batch_size=batch_size, **run)[None], [label])
                continue
            pending_views.extend(stacks)
            pending_labels.append(label)
            if len(pending_labels) >= images_per_batch:
                flush()
        if pending_labels:
            flush()
    finally:
        net.train(was_training)
    top1, topk, nll, n = totals
    if n == 0:
        raise ValueError("no images to evaluate")
    return ViewsResult(
        top1_error=100.0 * (1 - top1 / n),
        top5_error=100.0 * (1 - topk / n),
        loss=nll / n,
        images=n,
        views_per_image=per_image,
        method=method.describe(),
    )
