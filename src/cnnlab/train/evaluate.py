"""Top-1/top-5 error of a network on a dataset, and predictions for the user's own images.

Inputs are normalised as in training, with the statistics of the training split the network
was trained on (per-channel mean and std, or the per-pixel mean; stored in its checkpoint), on
whole batches on the device. Errors are in percent.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from cnnlab.data import ArrayDataset, Normalize
from cnnlab.data.augment import CenterCrop
from cnnlab.data.stream import StreamDataset, loader
from cnnlab.models.pretrained import Pretrained
from cnnlab.models.pretrained import load as load_pretrained
from cnnlab.models.registry import create_model
from cnnlab.train.checkpoint import CheckpointError, load_checkpoint
from cnnlab.train.distributed import DistEnv, all_reduce_sum, resolve_device
from cnnlab.train.hardware import autocast, choose_arithmetic

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

__all__ = [
    "TTA_CHOICES",
    "EvalResult",
    "Prediction",
    "evaluate",
    "evaluate_checkpoint",
    "input_normalize",
    "load_model",
    "predict",
]


TTA_CHOICES = ("none", "flip")


def input_normalize(
    mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor, device: torch.device
) -> Normalize:
    """cnnlab.data.Normalize from a checkpoint's statistics (per-channel or per-pixel mean)."""
    return Normalize(
        torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
    ).to(device)


@dataclass(frozen=True)
class EvalResult:
    """Errors in percent over `images` images."""

    top1_error: float
    top5_error: float  # top-k with k = min(5, number of classes)
    loss: float  # mean cross-entropy
    images: int


def held_out_batches(
    data: ArrayDataset | StreamDataset, lo: int, hi: int, batch_size: int, workers: int = 0
) -> Iterator[tuple[Tensor, Tensor]]:
    """uint8 images and labels of positions lo..hi-1, in order, `batch_size` at a time.

    An in-memory dataset is sliced; a stream's images are read and cropped (its transform,
    e.g. the centre crop) by `workers` DataLoader processes.
    """
    if isinstance(data, ArrayDataset):
        for start in range(lo, hi, batch_size):
            stop = min(hi, start + batch_size)
            yield data.images[start:stop], data.labels[start:stop]
        return
    positions = [
        [(i, 0) for i in range(s, min(hi, s + batch_size))] for s in range(lo, hi, batch_size)
    ]
    yield from loader(data, workers, batch_sampler=positions)


def _classes(data: ArrayDataset | StreamDataset) -> tuple[str, ...]:
    return data.classes if isinstance(data, ArrayDataset) else data.stream.classes


@torch.no_grad()
def evaluate(
    net: nn.Module,
    data: ArrayDataset | StreamDataset,
    normalize: Normalize,
    *,
    device: torch.device,
    batch_size: int = 500,
    precision: str = "fp32",
    memory_format: torch.memory_format = torch.contiguous_format,
    env: DistEnv | None = None,
    tta: str = "none",
    workers: int = 0,
) -> EvalResult:
    """Top-1 and top-5 error of `net` (in eval mode) on `data`.

    `data` is an in-memory dataset, or a stream with its evaluation crop (read by `workers`
    DataLoader processes).

    With several processes each evaluates a contiguous share of `data` and the counts are
    summed, so every process gets the same result.

    `tta="flip"` is test-time augmentation: the logits of each image and of its horizontal
    mirror are averaged (the flip the training augmentation uses). A separate figure, not the
    plain test error: the papers' CIFAR-10 errors are of single views.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    if tta not in TTA_CHOICES:
        raise ValueError(f"--tta must be one of {', '.join(TTA_CHOICES)}, got {tta!r}")
    env = env or DistEnv()
    n = len(data)
    lo, hi = n * env.rank // env.world_size, n * (env.rank + 1) // env.world_size
    was_training = net.training
    net.eval()
    k = min(5, len(_classes(data)))
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # top1, topk, loss, images
    for images, labels in held_out_batches(data, lo, hi, batch_size, workers):
        x = normalize(images.to(device, non_blocking=True))
        x = x.contiguous(memory_format=memory_format)
        y = labels.to(device, non_blocking=True)
        with autocast(device, precision):
            logits = net(x).float()
            if tta == "flip":
                logits = (logits + net(x.flip(3)).float()) / 2
        topk = logits.topk(k, dim=1).indices
        totals[0] += (topk[:, 0] == y).sum()
        totals[1] += (topk == y[:, None]).any(dim=1).sum()
        totals[2] += nn.functional.cross_entropy(logits, y, reduction="sum")
        totals[3] += len(y)
    net.train(was_training)
    top1, topk_correct, loss, count = all_reduce_sum(totals, env).tolist()
    count = max(count, 1.0)
    return EvalResult(
        top1_error=100.0 * (1 - top1 / count),
        top5_error=100.0 * (1 - topk_correct / count),
        loss=loss / count,
        images=int(count),
    )


def load_model(
    checkpoint: str | Path, device: str | torch.device | None = None
) -> tuple[nn.Module, dict[str, object]]:
    """Rebuild the network of a checkpoint (by its registered name) and load its weights.

    Returns:
        The network in eval mode on `device`, and the checkpoint's contents.

    Raises:
        CheckpointError: see `load_checkpoint`; also weights that do not fit the model.
    """
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    state = load_checkpoint(checkpoint)
    net = create_model(
        state["model"], num_classes=state["num_classes"], **dict(state["model_options"])
    )
    try:
        net.load_state_dict(state["model_state"])
    except RuntimeError as e:
        raise CheckpointError(
            f"{checkpoint}: its weights do not fit {state['model']} as built by this cnnlab "
            f"({str(e).splitlines()[0]})"
        ) from None
    return net.to(device).eval(), state


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: ArrayDataset,
    *,
    device: str | None = None,
    batch_size: int = 500,
    precision: str = "auto",
    tta: str = "none",
) -> EvalResult:
    """Top-1 and top-5 error of a checkpoint's network on `data`.

    `tta` "flip" averages each image's logits with its mirror's (see `evaluate`).

    `precision` "auto" evaluates in bfloat16 where the device runs it natively (hardware.py).

    Raises:
        ValueError: `data` has other classes than the network was trained on.
    """
    dev = resolve_device(device)
    net, state = load_model(checkpoint, dev)
    check_classes(state["classes"], data.classes)
    normalize = input_normalize(state["mean"], state["std"], dev)
    arithmetic = choose_arithmetic(dev, precision)
    net = net.to(memory_format=arithmetic.memory_format)
    return evaluate(
        net, data, normalize, device=dev, batch_size=batch_size,
        precision=arithmetic.precision, memory_format=arithmetic.memory_format, tta=tta,
    )  # fmt: skip


@dataclass(frozen=True)
class Prediction:
    """The most probable classes of one image, most probable first."""

    path: str
    classes: tuple[str, ...]
    probabilities: tuple[float, ...]


@torch.no_grad()
def predict(
    checkpoint: str | Path,
    images: Sequence[str | Path],
    *,
    top: int = 5,
    device: str | None = None,
    weights: str | None = None,
) -> list[Prediction]:
    """The `top` most probable classes of each image file, by a checkpoint's network or by
    torchvision's published weights.

    A checkpoint's network: each image is converted to the training images' channels and
    resized as a whole (no crop, aspect ratio not kept) to the training images' size with
    bilinear interpolation by PIL, then normalised with the training statistics. A network
    trained on a streamed image folder gets the crop it was evaluated on: shorter side
    resized, then the centre crop (the checkpoint's `preprocess`).

    With `weights` ("IMAGENET1K_V1", "DEFAULT"; see cnnlab.models.pretrained), `checkpoint`
    is a model name instead, and the classes are the weights' (ImageNet's 1000): each image
    is resized (shorter side) and centre-cropped as torchvision's transforms for those weights
    do, then normalised with their mean and std.

    Raises:
        ValueError: an image file is missing or unreadable (the message names it); with
            `weights`, a checkpoint instead of a model name, or weights without classes.
        WeightsFileError: the weights cannot be found, downloaded or read.
    """
    from PIL import Image, UnidentifiedImageError

    if top < 1:
        raise ValueError(f"--top must be at least 1, got {top}")
    dev = resolve_device(device)
    if weights is None:
        net, state = load_model(checkpoint, dev)
        channels, height, width = (int(v) for v in state["image_shape"])
        normalize = input_normalize(state["mean"], state["std"], dev)
        classes = list(state["classes"])

        crop = CenterCrop(**state["preprocess"]) if "preprocess" in state else None

        def prepare(img: PILImage) -> Tensor:
            img = img.convert("RGB" if channels == 3 else "L")
            if crop is not None:  # trained on a streamed folder: its evaluation crop
                return crop(_pixels(img))
            return _pixels(img.resize((width, height), Image.Resampling.BILINEAR))

    else:
        net, meta = pretrained_classifier(str(checkpoint), weights)
        net = net.to(dev)
        normalize = input_normalize(meta.mean, meta.std, dev)
        classes = list(meta.classes)

        def prepare(img: PILImage) -> Tensor:
            return meta.prepare(_pixels(img.convert("RGB")))

    results = []
    for path in images:
        try:
            with Image.open(path) as img:
                x = prepare(img)
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise ValueError(f"cannot read image {path}: {_first_line(e)}") from None
        probs = net(normalize(x[None].to(dev))).float().softmax(dim=1)[0]
        p, i = probs.topk(min(top, len(classes)))
        results.append(
            Prediction(str(path), tuple(classes[j] for j in i.tolist()), tuple(p.tolist()))
        )
    return results


def check_classes(trained: Sequence[str], data: Sequence[str]) -> None:
    """A clear error when the data's classes are not those the network was trained on."""
    if list(data) != list(trained):
        raise ValueError(
            f"the checkpoint was trained on {len(trained)} classes ({_preview(trained)}) but "
            f"the data has {len(data)} ({_preview(data)})"
        )


def _pixels(img: PILImage) -> Tensor:
    """A PIL image as uint8 C x H x W."""
    channels = len(img.getbands())
    width, height = img.size
    pixels = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return pixels.view(height, width, channels).permute(2, 0, 1)


def pretrained_classifier(name: str, weights: str) -> tuple[nn.Module, Pretrained]:
    """torchvision's published weights for a model name, refusing weights without classes
    (vgg16's IMAGENET1K_FEATURES) in one line."""
    net, meta = load_pretrained(name, weights)
    if meta.classes is None:
        raise ValueError(
            f"{meta.torchvision_name} has no trained classifier (torchvision publishes it for "
            "feature extraction), so it names no classes; choose other weights"
        )
    return net, meta


def _preview(classes: Sequence[str]) -> str:
    names = list(classes)
    return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
