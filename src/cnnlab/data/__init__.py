"""Datasets as whole tensors, read once and cached, with batched augmentation.

    load_dataset(spec, split)     "cifar10" | "cifar100" | a path -> ArrayDataset (uint8 NCHW)
    cache_dir()                   $CNNLAB_CACHE, default ~/.cache/cnnlab
    train_val_split(labels)       the paper's 45k/5k split (section 4.2), as positions
    channel_stats(images)         per-channel mean, std in 0..1 units
    Normalize.fit(images, mode)   per-channel ("channel") or per-pixel mean ("pixel")
    random_crop_flip(x)           4-pixel pad, random 32x32 crop, horizontal flip, whole batch
                                  (crop_flip: the same with given offsets; zero or reflect pad)
    alternating_flips, cutout     flips alternating over epochs; a zeroed square per image
    DataError                     every dataset problem a user can fix, as one line
    MissingSplitError             a DataError: the tree has no folder for that split

Splits: "train" (50,000), "test" (10,000, only ever reported), "train45k" and "val5k" (model
selection). See load.py for the formats and the cache, dataset.py for the split.
"""

from cnnlab.data.dataset import SPLITS, ArrayDataset, DataError, MissingSplitError, train_val_split
from cnnlab.data.load import cache_dir, load_dataset
from cnnlab.data.transforms import (
    PAD_MODES,
    Normalize,
    alternating_flips,
    channel_stats,
    crop_flip,
    crop_flip_params,
    cutout,
    mean_image,
    random_crop_flip,
)

__all__ = [
    "PAD_MODES",
    "SPLITS",
    "ArrayDataset",
    "DataError",
    "MissingSplitError",
    "Normalize",
    "alternating_flips",
    "cache_dir",
    "channel_stats",
    "crop_flip",
    "crop_flip_params",
    "cutout",
    "load_dataset",
    "mean_image",
    "random_crop_flip",
    "train_val_split",
]
