"""Where each step's batch comes from: a tensor in memory, or image files streamed by workers.

    batches = MemoryBatches(data, recipe, seed, device, env)     # CIFAR: the whole set on the
    batches = StreamBatches(stream, crop, seed, device, env, ...) # device, or ImageNet: files
    x, y = batches.get(step)         # this process's share of global batch `step`, uint8 on device

Both draw the images of step t from (seed, t) alone: the order of epoch e is a permutation
seeded by (seed, e), and each image's augmentation by (seed, t, its place in the batch). So
the images of a step do not depend on the number of processes or of loader workers, and a
resumed run sees the same batches as one never interrupted.

MemoryBatches augments the whole global batch on the device at once (zero pad, 4 pixels in
the paper, and random crop, flips, cutout; data/transforms.py) and each process takes its
share. StreamBatches has torch DataLoader workers read, decode and crop only this process's
share (data/augment.py), in uint8, while the step runs; a step waits only when the workers
fall behind.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from cnnlab.data import ArrayDataset, alternating_flips, crop_flip, crop_flip_params, cutout
from cnnlab.data.stream import ImageStream, StreamDataset, loader
from cnnlab.train.distributed import DistEnv
from cnnlab.train.recipes import Recipe

__all__ = ["MemoryBatches", "StreamBatches", "make_generator", "seed_of"]


def seed_of(seed: int, kind: str, index: int) -> int:
    """A 63-bit seed for the `index`-th `kind` ("epoch", "augment", "step") of a run."""
    digest = hashlib.blake2b(f"{seed}/{kind}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def make_generator(
    seed: int, kind: str, index: int, device: torch.device | None = None
) -> torch.Generator:
    return torch.Generator(device=device or "cpu").manual_seed(seed_of(seed, kind, index))


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The order of the training images in an epoch: a permutation drawn from (seed, epoch)."""
    return torch.randperm(n, generator=make_generator(seed, "epoch", epoch))


class MemoryBatches:
    """Batches of an in-memory dataset, augmented as a batch on the device (the CIFAR path)."""

    def __init__(
        self, data: ArrayDataset, recipe: Recipe, seed: int, device: torch.device, env: DistEnv
    ) -> None:
        if recipe.augment and recipe.crop != "pad":
            raise ValueError(
                f"recipe {recipe.name} crops as the ImageNet papers do (crop={recipe.crop!r}), "
                "which needs images streamed from an image folder (--data-mode stream); for "
                "small images in memory use -R crop=pad, or the fast or he2015 recipe"
            )
        self.images = data.images.to(device)
        self.labels = data.labels.to(device)
        self.recipe, self.seed, self.device, self.env = recipe, seed, device, env
        self.batch = recipe.batch_size
        self.local = self.batch // env.world_size
        self.steps_per_epoch = len(data) // self.batch
        # recipe.clean_final: the last steps see the images as they are
        self.augment_until = recipe.steps - round(recipe.clean_final * recipe.steps)
        self._epoch, self._order = -1, torch.empty(0)
        self.flip_bits = None  # recipe.flip "alternate": which images epoch 0 mirrors
        if recipe.flip == "alternate":
            g = make_generator(seed, "flips", 0)
            self.flip_bits = (torch.rand(len(data), generator=g) < 0.5).to(device)

    def get(self, step: int) -> tuple[Tensor, Tensor]:
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = epoch_order(len(self.labels), self.seed, epoch).to(self.device)
        idx = self._order[i * self.batch : (i + 1) * self.batch]
        x, y = self.images[idx], self.labels[idx]
        if self.recipe.augment and step < self.augment_until:
            # The whole global batch is augmented by every process, then each takes its share:
            # the images of a step do not depend on the number of processes.
            g = make_generator(self.seed, "augment", step, self.device)
            top, left, flipped = crop_flip_params(
                self.batch, self.recipe.pad, generator=g, device=self.device
            )
            if self.flip_bits is not None:  # the coin flips are drawn all the same: same crops
                flipped = alternating_flips(idx, epoch, self.flip_bits)
            x = crop_flip(x, top, left, flipped, self.recipe.pad, self.recipe.pad_mode)
            x = cutout(x, self.recipe.cutout, generator=g)
        share = slice(self.env.rank * self.local, (self.env.rank + 1) * self.local)
        return x[share], y[share]

    def close(self) -> None:
        pass


class _StepSampler:
    """A DataLoader batch sampler: for each step from `start`, this process's (index, seed)s."""

    def __init__(
        self, n: int, batch: int, rank: int, local: int, seed: int, start: int, stop: int
    ) -> None:
        self.n, self.batch, self.rank, self.local = n, batch, rank, local
        self.seed, self.start, self.stop = seed, start, stop
        self.steps_per_epoch = n // batch

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, order = -1, torch.empty(0, dtype=torch.int64)
        for step in range(self.start, self.stop):
            e, i = divmod(step, self.steps_per_epoch)
            if e != epoch:
                epoch, order = e, epoch_order(self.n, self.seed, e)
            first = i * self.batch + self.rank * self.local
            yield [
                (
                    int(order[p]),
                    seed_of(self.seed, "sample", step * self.batch + p - i * self.batch),
                )
                for p in range(first, first + self.local)
            ]


class StreamBatches:
    """Batches of an image stream, read, decoded and cropped by DataLoader worker processes.

    Args:
        stream: the training split's index.
        crop: the per-image training transform (data/augment.py).
        workers: loader processes (0: in this process, for tests).
        total: the run's last step (the loader is sized to it).
    """

    def __init__(
        self,
        stream: ImageStream,
        crop: Callable[[Tensor, torch.Generator], Tensor],
        recipe: Recipe,
        seed: int,
        device: torch.device,
        env: DistEnv,
        *,
        workers: int,
        total: int,
    ) -> None:
        self.dataset = StreamDataset(stream, crop)
        self.seed, self.device, self.env, self.workers, self.total = (
            seed,
            device,
            env,
            workers,
            total,
        )
        self.batch = recipe.batch_size
        self.local = self.batch // env.world_size
        self.steps_per_epoch = len(stream) // self.batch
        self._next: int | None = None
        self._it: Iterator[tuple[Tensor, Tensor]] | None = None

    def _start(self, step: int) -> None:
        sampler = _StepSampler(len(self.dataset), self.batch, self.env.rank, self.local,
                               self.seed, step, self.total)  # fmt: skip
        batches = loader(
            self.dataset, self.workers, batch_sampler=sampler,
            pin_memory=self.device.type == "cuda", prefetch_factor=4 if self.workers else None,
        )  # fmt: skip
        self._it, self._next = iter(batches), step

    def get(self, step: int) -> tuple[Tensor, Tensor]:
        if self._next != step or self._it is None:
            self._start(step)
        assert self._it is not None
        x, y = next(self._it)
        self._next = step + 1
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def close(self) -> None:
        self._it = None  # the loader's workers exit with their iterator
