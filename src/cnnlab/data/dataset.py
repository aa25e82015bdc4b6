"""The in-memory dataset type, the error every reader raises, and the 45k/5k split.

He et al. 2015 (arXiv:1512.03385), section 4.2: the CIFAR-10 schedule's length "is determined
on a 45k/5k train/val split". The paper does not say which 5k; ours is fixed and documented so
that anyone can rebuild it without our code or a random number generator:

    val5k     within each class, in dataset order, every 10th image (the 10th, 20th, ...);
              500 per class, 5,000 in all for CIFAR-10 (50 per class for CIFAR-100)
    train45k  the other 45,000

"Dataset order" is the order of the source: the official batches data_batch_1..5 in file
order, or an image folder's class folders and file names sorted. The official CIFAR-10
archive and the JPEG copy order their train images differently, so their val5k differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

# The splits load_dataset knows by name; image folders may also name any of their own folders.
SPLITS = ("train", "test", "train45k", "val5k")

# val5k takes every VAL_EVERY-th image of each class: 5,000 of CIFAR's 50,000.
VAL_EVERY = 10


class DataError(ValueError):
    """A dataset that cannot be read as asked; the message is one line, fit for a user."""


class MissingSplitError(DataError):
    """The dataset has no such split (an image-folder tree without that folder), so a caller
    for whom the split is optional (validation, test) can go on without it."""


@dataclass(frozen=True, eq=False, repr=False)
class ArrayDataset:
    """A whole dataset as two tensors, ready to be moved to the training device in one go.

    Attributes:
        images: uint8, N x 3 x H x W, contiguous (NCHW), RGB.
        labels: int64, N, each in range(len(classes)).
        classes: class names; labels index into this tuple.
    """

    images: Tensor
    labels: Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(
                f"images must be uint8 N x 3 x H x W, got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(
                f"labels must be int64 of shape ({self.images.shape[0]},), got "
                f"{self.labels.dtype} {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:
        _, c, h, w = self.images.shape
        return f"ArrayDataset({len(self)} images {c}x{h}x{w}, {len(self.classes)} classes)"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, index: Tensor) -> ArrayDataset:
        """The images at `index` (int64 positions or a bool mask), as a new contiguous dataset."""
        return ArrayDataset(self.images[index].contiguous(), self.labels[index], self.classes)


def train_val_split(labels: Tensor, every: int = VAL_EVERY) -> tuple[Tensor, Tensor]:
    """Positions of train45k and val5k in the full train split (see the module docstring).

    Args:
        labels: int64 labels of the full train split, in dataset order.
        every: take every `every`-th image of each class for validation.

    Returns:
        (train_index, val_index): sorted int64 positions, disjoint, together all of range(N).
    """
    n = labels.shape[0]
    order = torch.argsort(labels, stable=True)  # positions grouped by class, dataset order kept
    counts = torch.bincount(labels, minlength=1)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty(n, dtype=torch.int64)
    rank[order] = torch.arange(n) - starts[labels[order]]  # position of each image in its class
    is_val = rank % every == every - 1
    return is_val.logical_not().nonzero().squeeze(1), is_val.nonzero().squeeze(1)
