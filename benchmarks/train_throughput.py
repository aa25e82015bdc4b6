"""Training throughput, side by side: cnnlab's loop against the usual CIFAR training script.

(a) cnnlab: `cnnlab.train.loop.train` with the `fast` recipe's data path and arithmetic: the
    whole training set as one uint8 tensor, batched crop and flip, channels_last, bfloat16
    autocast; and the same loop in float32 ("cnnlab fp32") to separate layout from precision.
(b) reference, written the way the popular CIFAR ResNet repositories do it: a Dataset that
    turns each image into a PIL image, per-image torchvision transforms RandomCrop(32, 4),
    RandomHorizontalFlip, ToTensor, Normalize; a DataLoader with 2 workers; the eager float32
    NCHW model; SGD with momentum.

Same model, data, batch size and number of steps; the sides alternate in one process run
(a, b, a, b, ...) so that a busy machine slows both alike, and the median of the rounds is
reported. Each timed run goes from a fresh model to its last step, so it includes what a
user waits for (the reference's worker start-up, cnnlab's normalisation statistics).

    .venv/bin/python benchmarks/train_throughput.py --models resnet20 resnet56
    .venv/bin/python benchmarks/train_throughput.py --data ../shared/datasets/cifar10-jpeg.tar.gz

Without --data the images are random (the speed of a step does not depend on their content).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torchvision.transforms as T
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

import cnnlab
from cnnlab.data import ArrayDataset, channel_stats, load_dataset
from cnnlab.train.loop import train
from cnnlab.train.recipes import FAST


class PilDataset(Dataset):
    """CIFAR as torchvision's datasets.CIFAR10 serves it: HWC uint8 array -> PIL -> transform."""

    def __init__(self, data: ArrayDataset, transform: Callable[[Image.Image], torch.Tensor]):
        self.images = data.images.permute(0, 2, 3, 1).numpy()  # N x 32 x 32 x 3
        self.labels = data.labels.numpy()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def reference_run(model_name: str, data: ArrayDataset, batch_size: int, steps: int) -> float:
    """Images per second of the usual script over `steps` steps, start-up included."""
    start = time.perf_counter()
    mean, std = (s.tolist() for s in channel_stats(data.images))
    transform = T.Compose(
        [
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )
    loader = DataLoader(
        PilDataset(data, transform),
        batch_size=batch_size,
        shuffle=True,
        num_workers=2,
        drop_last=True,
        persistent_workers=False,
    )
    model = cnnlab.create_model(model_name, num_classes=len(data.classes))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    criterion = nn.CrossEntropyLoss()
    model.train()
    done = 0
    while done < steps:
        for x, y in loader:
            loss = criterion(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            done += 1
            if done == steps:
                break
    loss.item()
    return steps * batch_size / (time.perf_counter() - start)


def cnnlab_run(
    model_name: str, data: ArrayDataset, batch_size: int, steps: int, precision: str
) -> float:
    """Images per second of cnnlab's loop over `steps` steps, start-up included."""
    recipe = FAST.replace(batch_size=batch_size, precision=precision).with_steps(steps)
    start = time.perf_counter()
    train(model_name, data, recipe, out=None, progress=False, device="cpu", log_every=steps)
    return steps * batch_size / (time.perf_counter() - start)


def synthetic(n: int) -> ArrayDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    return ArrayDataset(images, labels, tuple(f"class{i}" for i in range(10)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=60, help="steps per timed run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per side")
    parser.add_argument("--data", help="a dataset spec (default: 10,000 random images)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    data = load_dataset(args.data, "train") if args.data else synthetic(10_000)
    sides: dict[str, Callable[[str], float]] = {
        "cnnlab bf16": lambda m: cnnlab_run(m, data, args.batch_size, args.steps, "bf16"),
        "cnnlab fp32": lambda m: cnnlab_run(m, data, args.batch_size, args.steps, "fp32"),
        "reference": lambda m: reference_run(m, data, args.batch_size, args.steps),
    }
    cpu = platform.processor() or platform.machine()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}; "
        f"batch {args.batch_size}, {args.steps} steps a run, {args.rounds} rounds, "
        f"data: {args.data or 'random'}"
    )
    results = {}
    for model_name in args.models:
        speeds: dict[str, list[float]] = {side: [] for side in sides}
        for _ in range(args.rounds):
            for side, run in sides.items():
                speeds[side].append(run(model_name))
        median = {side: statistics.median(v) for side, v in speeds.items()}
        ref = median["reference"]
        for side, v in median.items():
            print(
                f"{model_name:10s} {side:12s} {v:7.0f} images/s   x{v / ref:.2f} "
                f"(rounds: {', '.join(f'{s:.0f}' for s in speeds[side])})"
            )
        results[model_name] = {"images_per_s": median, "rounds": speeds}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
