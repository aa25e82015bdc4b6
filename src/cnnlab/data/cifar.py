"""CIFAR-10 and CIFAR-100 in their official python format (Krizhevsky 2009).

    archive                  folder inside          train                 test        classes
    cifar-10-python.tar.gz   cifar-10-batches-py/   data_batch_1..5       test_batch  batches.meta
    cifar-100-python.tar.gz  cifar-100-python/      train                 test        meta

Each batch is a pickled dict: "data" a uint8 array N x 3072 (1024 red, then green, then blue,
rows of 32 pixels), and "labels" (CIFAR-10) or "fine_labels" / "coarse_labels" (CIFAR-100).
We use CIFAR-100's 100 fine labels. The batches were pickled by Python 2, so they are read
with encoding="latin1", and through an unpickler that builds numpy arrays and plain
containers only: a pickle can name any callable, and a downloaded archive is data, not code.
"""

from __future__ import annotations

import codecs
import functools
import io
import os
import pickle
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from cnnlab.data.dataset import ArrayDataset, DataError
from cnnlab.data.files import download

# Where the official archives live. CNNLAB_CIFAR_URL overrides it (a mirror, or a test server).
BASE_URL = "https://www.cs.toronto.edu/~kriz/"


@dataclass(frozen=True)
class CifarArchive:
    """One official archive: its file, its md5 and the members that hold each split."""

    filename: str
    md5: str
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    label_key: str
    names_key: str


ARCHIVES = {
    "cifar10": CifarArchive(
        filename="cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py",
        train=("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"),
        test=("test_batch",),
        meta="batches.meta",
        label_key="labels",
        names_key="label_names",
    ),
    "cifar100": CifarArchive(
        filename="cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python",
        train=("train",),
        test=("test",),
        meta="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
    ),
}


def base_url() -> str:
    return os.environ.get("CNNLAB_CIFAR_URL") or BASE_URL


def fetch(name: str, root: Path, *, download_missing: bool = True, progress: bool = True) -> Path:
    """The official archive `name` in `root`, downloaded there first if it is absent.

    Raises:
        DataError: absent and download_missing is False, or the download failed.
    """
    archive = ARCHIVES[name]
    path = root / archive.filename
    if path.is_file():
        return path
    if not download_missing:
        raise DataError(
            f"{name}: {path} does not exist and downloading is off; put {archive.filename} "
            f"(md5 {archive.md5}) there, or pass a path to an archive or folder"
        )
    download(base_url().rstrip("/") + "/" + archive.filename, path, archive.md5, progress=progress)
    return path


@functools.cache
def _allowed_globals() -> dict[tuple[str, str], Callable[..., Any]]:
    # numpy pickles name these under numpy.core (numpy 1, and Python 2's CIFAR batches)
    # or numpy._core (numpy 2); the functions themselves are taken from live arrays.
    reconstruct = np.empty(0).__reduce__()[0]
    frombuffer = np.zeros(1, np.uint8).__reduce_ex__(5)[0]
    allowed: dict[tuple[str, str], Callable[..., Any]] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # bytes in a protocol 2 pickle
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _allowed_globals()[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"{module}.{name} is not allowed in a CIFAR batch"
            ) from None


def _unpickle(data: bytes, name: str) -> dict[str, Any]:
    try:
        obj = _BatchUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as e:  # any malformed pickle: report which member, keep the cause
        raise DataError(f"{name}: not a CIFAR python batch ({e})") from e
    if not isinstance(obj, dict):
        raise DataError(f"{name}: not a CIFAR python batch (a {type(obj).__name__})")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _classes(meta: dict[str, Any], archive: CifarArchive, name: str) -> tuple[str, ...]:
    names = meta.get(archive.names_key)
    if not isinstance(names, list) or not names:
        raise DataError(f"{name}: no {archive.names_key!r} list")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def _batch(
    batch: dict[str, Any], archive: CifarArchive, name: str, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    data, labels = batch.get("data"), batch.get(archive.label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DataError(f"{name}: 'data' is not a uint8 N x 3072 array")
    if data.shape[1] != 3 * 32 * 32 or labels is None or len(labels) != data.shape[0]:
        raise DataError(f"{name}: expected N x 3072 'data' and N {archive.label_key!r}")
    labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DataError(f"{name}: labels outside 0..{num_classes - 1}")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32)), labels


def _split_members(archive: CifarArchive, split: str, source: str) -> tuple[str, ...]:
    if split not in ("train", "test"):
        raise DataError(f"{source}: no split {split!r}; CIFAR has train, test, train45k, val5k")
    return archive.train if split == "train" else archive.test


def decode(
    members: Mapping[str, bytes], archive: CifarArchive, split: str, source: str
) -> ArrayDataset:
    """The split's images and labels from the archive's member files (name -> bytes)."""
    batches = _split_members(archive, split, source)
    wanted = (archive.meta, *batches)
    missing = [m for m in wanted if m not in members]
    if missing:
        raise DataError(f"{source}: missing {', '.join(missing)} (incomplete CIFAR archive)")
    classes = _classes(_unpickle(members[archive.meta], archive.meta), archive, archive.meta)
    images, labels = [], []
    for m in batches:
        x, y = _batch(_unpickle(members[m], m), archive, m, len(classes))
        images.append(x)
        labels.append(y)
    return ArrayDataset(torch.cat(images).contiguous(), torch.cat(labels), classes)


def read_folder(folder: Path, archive: CifarArchive, split: str) -> ArrayDataset:
    """A split from the extracted folder (cifar-10-batches-py/ or cifar-100-python/)."""
    members = {}
    for m in (archive.meta, *_split_members(archive, split, str(folder))):
        if (folder / m).is_file():
            members[m] = (folder / m).read_bytes()
    return decode(members, archive, split, str(folder))


def is_member(path: PurePosixPath) -> bool:
    """Whether an archive member could be one of the official batch or meta files."""
    return len(path.parts) == 2 and any(
        path.parts[0] == a.folder and path.parts[1] in (*a.train, *a.test, a.meta)
        for a in ARCHIVES.values()
    )


def archive_kind(names: Iterable[PurePosixPath]) -> str | None:
    """Which official archive holds these member paths, if any."""
    folders = {p.parts[0] for p in names if len(p.parts) == 2}
    for kind, archive in ARCHIVES.items():
        if archive.folder in folders:
            return kind
    return None


def members_of(files: Mapping[PurePosixPath, bytes], archive: CifarArchive) -> dict[str, bytes]:
    """The official member files (by base name) among an archive's files."""
    return {p.parts[1]: b for p, b in files.items() if p.parts[:1] == (archive.folder,)}


def folder_kind(folder: Path) -> str | None:
    """Which official archive this extracted folder came from, if any."""
    for kind, archive in ARCHIVES.items():
        if (folder / archive.meta).is_file() and (folder / archive.train[0]).is_file():
            return kind
    return None
