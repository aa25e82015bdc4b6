"""What `cnnlab train` and `cnnlab eval` do: load the splits a run needs, then train or evaluate.

Splits. He et al. 2015 (section 4.2) chose their schedule on a 45k/5k train/val split and
report test error of networks trained on the 50k training images. `split="full"` (the
default) does the latter: all 50k, the final weights' test error reported, nothing selected,
so the test split chooses nothing. `split="45k"` trains on the 45k, evaluates the 5k during
training and keeps the checkpoint of lowest validation error as best.pt; the test error is
reported for the final weights and for best.pt.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from torch import Tensor

from cnnlab.data import ArrayDataset, DataError, MissingSplitError, Normalize, load_dataset
from cnnlab.data.augment import CenterCrop
from cnnlab.data.stream import DATA_MODES, ImageStream, StreamDataset, choose_mode, whole_images
from cnnlab.data.views import TestTime
from cnnlab.models import pretrained
from cnnlab.models.registry import check_choice, model_card
from cnnlab.options import parse_options  # re-exported: cnnlab.train.parse_options
from cnnlab.train.checkpoint import load_checkpoint
from cnnlab.train.distributed import resolve_device
from cnnlab.train.evaluate import (
    EvalResult,
    check_classes,
    evaluate,
    evaluate_checkpoint,
    input_normalize,
    load_model,
    pretrained_classifier,
)
from cnnlab.train.hardware import check_device, choose_arithmetic
from cnnlab.train.loop import TrainResult, check_run_folder, default_workers, train
from cnnlab.train.recipes import get_recipe
from cnnlab.train.testtime import ViewsResult, evaluate_views
from cnnlab.train.timing import check_minutes

__all__ = ["SPLITS", "evaluate_from_spec", "parse_options", "train_from_spec"]

# --split: training images, validation images (None: no model selection).
SPLITS = {"full": ("train", None), "45k": ("train45k", "val5k")}


def train_from_spec(
    model: str,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    recipe: str = "fast",
    split: str = "full",
    steps: int | None = None,
    epochs: float | None = None,
    time_minutes: float | None = None,
    budget: float | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    precision: str | None = None,
    seed: int = 0,
    device: str | None = None,
    compile: bool = False,
    resume: bool = False,
    eval_every: int | None = None,
    model_options: dict[str, object] | None = None,
    recipe_options: dict[str, object] | None = None,
    cache_dir: str | os.PathLike | None = None,
    skip_corrupt: bool = False,
    progress: bool = True,
    data_mode: str = "auto",
    workers: int | None = None,
) -> TrainResult:
    """Train `model` on a dataset given as in `load_dataset` ("cifar10", a path), into `out`.

    The recipe's fields are overridden by `recipe_options` ({"cutout": 8, "flip":
    "alternate"}: any field of `Recipe`), then by the arguments that are not None; `steps` or
    `epochs` rescale its milestones and warm-up, and `budget` scales its steps after that.
    `time_minutes` instead sizes the run to end in about that many minutes on this machine
    (measured when it starts; see timing.py).

    `data_mode`: "memory" decodes the whole dataset into one uint8 tensor (cached; small images
    such as CIFAR, trained at their own size), "stream" reads an image folder image by image
    with `workers` DataLoader processes (any size; the recipe's crop to the model's input
    size), "auto" picks by the images' size and number (cnnlab.data.stream.choose_mode).
    Streamed folders use their val/ split for validation when there is one (and test/ for
    the test figure).

    Raises:
        ValueError: conflicting or out-of-range options; see also `train`.
        DataError: the dataset cannot be read.
    """
    check_choice("split", split, tuple(SPLITS))
    check_choice("data_mode", data_mode, DATA_MODES)
    if sum(v is not None for v in (steps, epochs, time_minutes)) > 1:
        raise ValueError("give one of --steps, --epochs and --time")
    if time_minutes is not None and budget is not None:
        raise ValueError("--time sizes the run itself; drop --budget")
    check_minutes(time_minutes)  # before the data's first, long decode
    chosen = get_recipe(recipe).replace(**(recipe_options or {}))
    chosen = chosen.replace(batch_size=batch_size, lr=lr, precision=precision)
    # Bad options fail before a long first decode of the data.
    model_card(model)
    check_run_folder(Path(out), resume, create=False)
    dev = resolve_device(device)
    check_device(dev)
    show = progress and int(os.environ.get("RANK", "0")) == 0
    train_split, val_split = SPLITS[split]
    mode = choose_mode(data) if data_mode == "auto" else data_mode
    if mode == "stream":
        if split != "full":
            raise ValueError("--split 45k is CIFAR's; a streamed folder validates on its val/")
        train_data: ArrayDataset | ImageStream = ImageStream.open(
            data, "train", skip_corrupt=skip_corrupt
        )
        val_data: ArrayDataset | ImageStream | None = _optional_split(data, "val", skip_corrupt)
        test_data: ArrayDataset | ImageStream | None = _optional_split(data, "test", skip_corrupt)
        if val_data is None and test_data is None:
            raise DataError(f"{data}: no val/ or test/ folder beside train/ to evaluate on")
    else:

        def load(split: str) -> ArrayDataset:
            return load_dataset(
                data, split, cache_dir=cache_dir, skip_corrupt=skip_corrupt, progress=show
            )

        train_data = load(train_split)
        val_data = load(val_split) if val_split else None
        test_data = load("test")
    if epochs is not None:
        chosen = chosen.with_epochs(epochs, len(train_data))
    elif steps is not None:
        chosen = chosen.with_steps(steps)
    if budget is not None:
        chosen = chosen.scaled(budget)
    info = {"data": str(data), "split": split, "recipe_name": recipe, "time_minutes": time_minutes,
            "recipe_options": recipe_options or {}}  # fmt: skip
    return train(
        model, train_data, chosen, out=Path(out), val_data=val_data, test_data=test_data,
        model_options=model_options, seed=seed, device=dev, compile=compile, resume=resume,
        eval_every=eval_every, time_minutes=time_minutes, progress=progress, info=info,
        workers=workers,
    )  # fmt: skip


def _optional_split(data: str | os.PathLike, split: str, skip_corrupt: bool) -> ImageStream | None:
    try:
        return ImageStream.open(data, split, skip_corrupt=skip_corrupt)
    except MissingSplitError:
        return None


def evaluate_from_spec(
    checkpoint: str | os.PathLike,
    data: str | os.PathLike,
    *,
    split: str = "test",
    device: str | None = None,
    batch_size: int = 500,
    precision: str = "auto",
    tta: str = "none",
    test_time: str | None = None,
    scales: str | None = None,
    resize: int | None = None,
    crop: int | None = None,
    workers: int | None = None,
    weights: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> EvalResult | ViewsResult:
    """Top-1 and top-5 error of a checkpoint on a split of a dataset (default: test).

    `tta` "flip": test-time augmentation, each image's logits averaged with its mirror's.
    `test_time` "center" | "10crop" | "dense" (`scales` "224,256,384,480,640"): the papers'
    test-time methods (cnnlab.train.testtime), class posteriors averaged over the views. A
    network trained on a streamed folder is evaluated on the folder streamed too, its centre
    crop by default (the checkpoint records the resize and crop); in-memory data (CIFAR) by
    default as it was trained, whole images. `resize` and `crop` change the shorter side and
    the crop of center and 10crop (e.g. the pre-activation paper's 320 x 320 crop, He et al.
    2016, Table 5, for a network with global average pooling); given alone, they mean center.

    With `weights` (torchvision's published weights, e.g. "IMAGENET1K_V1"), `checkpoint` is a
    model name and the network is the published one, evaluated as its weights' transforms
    prepare images (resize, centre crop; `test_time` for the others). The folder's classes
    are matched to the weights' by name, or, for a folder of exactly as many classes (ImageNet's
    1000 WordNet-ID folders, n01440764 ...), by their sorted order, ImageNet's own order.
    """
    if (resize is not None or crop is not None) and test_time is None:
        test_time = "center"
    if test_time is not None and tta != "none":
        raise ValueError("--tta flip and --test-time are two methods; give one (10crop flips)")
    if test_time == "dense" and (resize is not None or crop is not None):
        raise ValueError("dense evaluation takes --scales, not --resize or --crop")
    if weights is not None:
        return _evaluate_published(
            str(checkpoint), weights, data, split=split, device=device, batch_size=batch_size,
            precision=precision, test_time=test_time or "center", scales=scales,
            resize=resize, crop=crop, workers=workers, cache_dir=cache_dir, progress=progress,
        )  # fmt: skip
    state = load_checkpoint(checkpoint)  # a bad checkpoint fails before the dataset is decoded
    prep = state.get("preprocess")
    if test_time is not None:
        side = int(state["image_shape"][-1])
        crop = crop or side
        method = TestTime.parse(  # bad --test-time or --scales fail before the data is read
            test_time,
            resize=resize or (prep["resize"] * crop // side if prep else crop),
            crop=crop,
            scales=scales,
        )
    elif scales is not None:
        raise ValueError("--scales applies to --test-time dense")
    workers = default_workers() if workers is None else workers
    streamed = prep is not None or choose_mode(data, split) == "stream"
    if test_time is None and not streamed:
        dataset = load_dataset(data, split, cache_dir=cache_dir, progress=progress)
        return evaluate_checkpoint(
            checkpoint, dataset, device=device, batch_size=batch_size, precision=precision, tta=tta
        )
    dev = resolve_device(device)
    net, state = load_model(checkpoint, dev)
    images = _open_split(data, split, streamed, cache_dir, progress)
    check_classes(state["classes"], images.classes)
    arithmetic = choose_arithmetic(dev, precision)
    net = net.to(memory_format=arithmetic.memory_format)
    normalize = input_normalize(state["mean"], state["std"], dev)
    how = {"device": dev, "precision": arithmetic.precision,
           "memory_format": arithmetic.memory_format}  # fmt: skip
    if test_time is None:  # a streamed network's own evaluation: the centre crop it trained for
        assert prep is not None and isinstance(images, ImageStream)
        crop = StreamDataset(images, CenterCrop(prep["resize"], prep["crop"]))
        return evaluate(net, crop, normalize, batch_size=batch_size, tta=tta, workers=workers,
                        **how)  # type: ignore[arg-type]  # fmt: skip
    if normalize.mean.shape[2:] != (1, 1) and method.crop != normalize.mean.shape[-1]:
        # A per-pixel mean fits crops of its own size only: whole images (dense) and crops of
        # other sizes get its average per channel.
        normalize = Normalize(normalize.mean.mean((2, 3)).flatten(), normalize.std.flatten())
        normalize = normalize.to(dev)
    return evaluate_views(
        net, _labelled_images(images, workers), method, normalize, batch_size=batch_size, **how
    )  # type: ignore[arg-type]


def _evaluate_published(
    model: str,
    weights: str,
    data: str | os.PathLike,
    *,
    split: str,
    device: str | None,
    batch_size: int,
    precision: str,
    test_time: str,
    scales: str | None,
    resize: int | None,
    crop: int | None,
    workers: int | None,
    cache_dir: str | os.PathLike | None,
    progress: bool,
) -> ViewsResult:
    """`evaluate_from_spec` for torchvision's published weights (see there)."""
    meta = pretrained.info(model, weights)  # a bad name fails before any file is read
    crop = crop or meta.crop_size
    resize = resize or meta.resize_size * crop // meta.crop_size
    method = TestTime.parse(test_time, resize=resize, crop=crop, scales=scales)
    images = _open_split(data, split, choose_mode(data, split) == "stream", cache_dir, progress)
    dev = resolve_device(device)
    net, meta = pretrained_classifier(model, weights)
    assert meta.classes is not None
    index = class_index(images.classes, meta.classes)
    arithmetic = choose_arithmetic(dev, precision)
    net = net.to(dev, memory_format=arithmetic.memory_format)
    normalize = input_normalize(meta.mean, meta.std, dev)
    items = _labelled_images(images, default_workers() if workers is None else workers)
    mapped = ((img, index[label]) for img, label in items)
    return evaluate_views(net, mapped, method, normalize, device=dev, batch_size=batch_size,
                          precision=arithmetic.precision,
                          memory_format=arithmetic.memory_format)  # fmt: skip


def _open_split(
    data: str | os.PathLike,
    split: str,
    streamed: bool,
    cache_dir: str | os.PathLike | None,
    progress: bool,
) -> ArrayDataset | ImageStream:
    """A split to evaluate: indexed for streaming, or decoded into memory (cached)."""
    if streamed:
        return ImageStream.open(data, split)
    return load_dataset(data, split, cache_dir=cache_dir, progress=progress)


def _labelled_images(
    images: ArrayDataset | ImageStream, workers: int
) -> Iterator[tuple[Tensor, int]]:
    """(uint8 image, label) pairs of a split, each at its own size (streams: decoded by workers)."""
    if isinstance(images, ImageStream):
        return whole_images(images, workers)
    return zip(images.images, images.labels.tolist(), strict=True)


def class_index(folders: Sequence[str], classes: Sequence[str]) -> list[int]:
    """For each class folder, the index of its class among a network's `classes`.

    By name where every folder is one of the classes ("tench", "goldfish"); else by sorted
    order where there are as many folders as classes (ImageNet's WordNet-ID folders sort into
    the order of its 1000 classes).

    Raises:
        ValueError: neither fits; the message names a folder that matches no class.
    """
    position = {name: i for i, name in enumerate(classes)}
    if all(f in position for f in folders):
        return [position[f] for f in folders]
    if len(folders) == len(classes):
        return list(range(len(classes)))  # folders come sorted (imagefolder.list_folder)
    unknown = next(f for f in folders if f not in position)
    raise ValueError(
        f"class folder {unknown!r} is not one of the weights' {len(classes)} classes "
        f"({', '.join(list(classes)[:3])}, ...): name the folders by those classes, or give "
        f"all {len(classes)} class folders (ImageNet's WordNet IDs sort into its class order)"
    )
