"""load_dataset: a dataset name or path in, an ArrayDataset out, decoded once and then cached.

    spec                                        read by
    "cifar10", "cifar100"                       cifar.py, from the official archive in the
                                                cache folder, downloaded first if absent
    cifar-10-python.tar.gz, cifar-100-python.tar.gz, or the folder they extract to
                                                cifar.py (pickled batches, read in memory)
    root/ holding <split>/<class>/<image>,      imagefolder.py (Pillow)
    or a .tar.gz, .tgz or .tar of it

The cache folder ($CNNLAB_CACHE, default ~/.cache/cnnlab) holds the downloaded archives and,
under tensors/, one file per source and split: torch.save of the uint8 images, int64 labels
and class names, loaded with weights_only=True. Its name carries a key of the source's content
(sha256 of an archive's bytes; for a folder, of its file paths, sizes and mtimes), so a changed
source is decoded again and an unchanged archive, wherever it lies, is not. Cache files are written
to a temporary file and renamed, so an interrupted run leaves no half-written file behind.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from pathlib import Path, PurePosixPath

import torch

from cnnlab.data import cifar, imagefolder
from cnnlab.data.dataset import ArrayDataset, DataError, train_val_split
from cnnlab.data.files import atomic_save, file_digest, folder_digest, is_archive, iter_tar

# Bump when the cache files' content changes meaning; old files are then ignored.
CACHE_FORMAT = 1

# Splits made from the train split (dataset.py, the paper's 45k/5k).
DERIVED = {"train45k": 0, "val5k": 1}


def cache_dir() -> Path:
    """The cache folder: $CNNLAB_CACHE, default ~/.cache/cnnlab."""
    return Path(os.environ.get("CNNLAB_CACHE") or Path.home() / ".cache" / "cnnlab").expanduser()


def _source(
    spec: str | os.PathLike, root: Path, download: bool, progress: bool
) -> tuple[Path, str | None]:
    """(path, official md5 or None) for a spec: a dataset name or an existing path."""
    if isinstance(spec, str) and spec.lower() in cifar.ARCHIVES:
        name = spec.lower()
        path = cifar.fetch(name, root, download_missing=download, progress=progress)
        return path, cifar.ARCHIVES[name].md5
    path = Path(spec).expanduser()
    if not path.exists():
        names = ", ".join(cifar.ARCHIVES)
        raise DataError(
            f"unknown dataset {str(spec)!r}: not one of {names} and no such file or folder"
        )
    if path.is_file() and not is_archive(path):
        raise DataError(f"{path}: not a folder nor a .tar.gz, .tgz or .tar archive")
    return path, None


def _cache_file(root: Path, path: Path, split: str) -> Path:
    content = file_digest(path) if path.is_file() else folder_digest(path)
    key = hashlib.sha256(f"cnnlab-data-{CACHE_FORMAT}:{content}".encode()).hexdigest()[:16]
    stem = path.name
    for suffix in (".gz", ".tgz", ".bz2", ".xz", ".tar"):
        stem = stem.removesuffix(suffix)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem) or "data"
    return root / "tensors" / f"{stem}-{key}-{split}.pt"


def decode_source(
    path: Path,
    split: str,
    *,
    skip_corrupt: bool = False,
    progress: bool = True,
    md5: str | None = None,
) -> tuple[ArrayDataset, list[str]]:
    """Read one split of a source from scratch (the slow path that the cache saves).

    Args:
        path: an archive or a folder.
        split: a split of the source itself ("train", "test", or an image folder's own).
        skip_corrupt: leave unreadable images out instead of raising.
        progress: show a progress bar while decoding images.
        md5: the official archive's md5, checked first.

    Returns:
        The dataset and the names of images skipped as unreadable.
    """
    if md5 is not None and (actual := file_digest(path, "md5")) != md5:
        raise DataError(
            f"{path}: md5 {actual} is not the official {md5}; delete it to download it again"
        )
    if path.is_dir():
        for kind, archive in cifar.ARCHIVES.items():
            for folder in (path, path / archive.folder):
                if folder.is_dir() and cifar.folder_kind(folder) == kind:
                    return cifar.read_folder(folder, archive, split), []
        return imagefolder.read_folder(path, split, skip_corrupt=skip_corrupt, progress=progress)
    files: dict[PurePosixPath, bytes] = {}
    dirs: set[PurePosixPath] = set()
    links: set[PurePosixPath] = set()

    def wanted(p: PurePosixPath) -> bool:
        return cifar.is_member(p) or imagefolder.is_image(p.name)

    for kind, item in iter_tar(path, wanted):
        if kind == "file":
            files[item[0]] = item[1]
        else:
            (dirs if kind == "dir" else links).add(item)
    official = cifar.archive_kind(files)
    if official is not None:
        archive = cifar.ARCHIVES[official]
        return cifar.decode(cifar.members_of(files, archive), archive, split, str(path)), []
    return imagefolder.read_tar_files(
        path, split, files, dirs, links, skip_corrupt=skip_corrupt, progress=progress
    )


def _read_cache(file: Path) -> tuple[ArrayDataset, list[str]] | None:
    if not file.is_file():
        return None
    try:
        obj = torch.load(file, weights_only=True)
        ds = ArrayDataset(obj["images"], obj["labels"], tuple(obj["classes"]))
        return ds, list(obj["skipped"])
    except Exception as e:  # a damaged or foreign cache file is rebuilt, never trusted
        warnings.warn(f"ignoring unreadable cache file {file} ({e}); decoding again", stacklevel=3)
        return None


def load_dataset(
    spec: str | os.PathLike,
    split: str = "train",
    *,
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
    skip_corrupt: bool = False,
    progress: bool = True,
) -> ArrayDataset:
    """Load a split of a dataset as uint8 tensors, decoding it only the first time.

    Args:
        spec: "cifar10" or "cifar100" (the official archive, downloaded into the cache if
            absent), or a path: an official archive or its extracted folder, an image-folder
            tree root/<split>/<class>/<image>, or a .tar.gz/.tgz/.tar of such a tree.
        split: "train", "test", "train45k" or "val5k" (the paper's 45k/5k split of train,
            see cnnlab.data.dataset), or another split folder of an image-folder tree.
        cache_dir: where archives and decoded tensors are kept (default: cache_dir()).
        download: fetch an absent official archive; if False, say where to put it instead.
        skip_corrupt: leave unreadable images out (with a warning giving their count)
            instead of raising.
        progress: show progress bars for downloading and decoding.

    Raises:
        DataError: unknown spec, missing or corrupt source, bad md5, no network, missing split
            or class folder, unreadable image, images of different sizes.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
    base = "train" if split in DERIVED else split
    path, md5 = _source(spec, root, download, progress)
    file = _cache_file(root, path, base)
    cached = _read_cache(file)
    if cached is None:
        ds, skipped = decode_source(
            path, base, skip_corrupt=skip_corrupt, progress=progress, md5=md5
        )
        payload = {
            "format": CACHE_FORMAT,
            "source": str(path),
            "split": base,
            "images": ds.images,
            "labels": ds.labels,
            "classes": list(ds.classes),
            "skipped": skipped,
        }
        atomic_save(payload, file)
    else:
        ds, skipped = cached
    if skipped:
        if not skip_corrupt:
            raise DataError(
                f"cannot read image {skipped[0]} ({len(skipped)} unreadable in {path} {base}); "
                "pass skip_corrupt=True (--skip-corrupt) to leave them out"
            )
        warnings.warn(
            f"skipped {len(skipped)} unreadable images in {path} ({base}), first {skipped[0]}",
            stacklevel=2,
        )
    if split in DERIVED:
        ds = ds.subset(train_val_split(ds.labels)[DERIVED[split]])
        if len(ds) == 0:
            raise DataError(f"{path}: {split} is empty (fewer than 10 train images per class)")
    return ds


_default_cache_dir = cache_dir  # load_dataset's cache_dir argument hides the function
