"""Image-folder datasets: root/<split>/<class>/<image>, as a folder or as a tar archive of one.

    root/train/airplane/0000.jpg     classes: the class folders of train/, sorted by name
    root/train/automobile/0000.jpg   (for CIFAR-10 the sorted names are its own label order);
    ...                              other splits use train's classes, so labels agree
    root/test/airplane/0000.jpg

The tree may also sit one folder down (archive.tar.gz holding mydata/train/...). Files whose
names start with "." (macOS ._ resource forks, .DS_Store) and files that are not images by
their suffix are ignored. Images are decoded with Pillow and converted to RGB; all must be
one size, and a file that does not decode is an error naming it, or a counted skip when asked.

Reading the 60,000 JPEGs of the CIFAR-10 copy from its .tar.gz takes about 8 s on this
machine (1 s of it streaming the archive), once per archive thanks to the cache; so one
process decodes, where a pool of two could at best halve a cost paid once.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from cnnlab.data.dataset import ArrayDataset, DataError, MissingSplitError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".gif", ".webp", ".tif", ".tiff")

# What Pillow raises for a file it cannot read: truncated data, unknown format, bad headers.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def decode(
    items: Sequence[tuple[str, bytes | Path]],
    labels: Sequence[int],
    classes: tuple[str, ...],
    *,
    skip_corrupt: bool = False,
    progress: bool = True,
    desc: str = "decode",
) -> tuple[ArrayDataset, list[str]]:
    """Decode (name, bytes or path) items into one uint8 NCHW tensor.

    Returns:
        The dataset and the names of the images skipped as unreadable (skip_corrupt only).

    Raises:
        DataError: an unreadable image (unless skip_corrupt), an image of another size than
            the first, or no readable image at all.
    """
    out: np.ndarray | None = None
    first = ""
    kept: list[int] = []
    skipped: list[str] = []
    for i, (name, src) in enumerate(tqdm(items, desc=desc, unit="img", disable=not progress)):
        try:
            with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as im:
                pixels = np.asarray(im.convert("RGB"))  # convert() reads the whole file
        except DECODE_ERRORS as e:
            if not skip_corrupt:
                raise DataError(
                    f"cannot read image {name} ({e}); pass skip_corrupt=True (--skip-corrupt) "
                    "to leave unreadable images out"
                ) from e
            skipped.append(name)
            continue
        if out is None:
            out = np.empty((len(items), *pixels.shape), np.uint8)  # N x H x W x 3
            first = name
        elif pixels.shape != out.shape[1:]:
            h, w = out.shape[1:3]
            raise DataError(
                f"{name}: image is {pixels.shape[1]}x{pixels.shape[0]}, expected {w}x{h} like "
                f"{first}; all images must have one size"
            )
        out[len(kept)] = pixels
        kept.append(i)
    if out is None:
        raise DataError(f"no readable image among {len(items)} files ({desc})")
    images = torch.from_numpy(out[: len(kept)]).permute(0, 3, 1, 2).contiguous()
    targets = torch.tensor(labels, dtype=torch.int64)[kept]
    return ArrayDataset(images, targets, classes), skipped


def _layout(
    root: str, split: str, split_classes: Iterable[str], train_classes: Iterable[str] | None
) -> tuple[tuple[str, ...], dict[str, int]]:
    """Classes (from train when there is one) and each split class's label."""
    classes = tuple(sorted(set(train_classes if train_classes is not None else split_classes)))
    if not classes:
        raise DataError(
            f"{root}/{split}: no class folders; expected {root}/{split}/<class>/<image>"
        )
    unknown = sorted(set(split_classes) - set(classes))
    if unknown:
        raise DataError(f"{root}/{split}/{unknown[0]}: class folder not in {root}/train")
    return classes, {c: i for i, c in enumerate(classes)}


def _split_error(root: str, split: str, found: Iterable[str]) -> MissingSplitError:
    names = ", ".join(sorted(found)) or "nothing"
    return MissingSplitError(
        f"{root}: no split folder {split!r} (found: {names}); "
        f"expected {root}/{split}/<class>/<image>"
    )


def _subfolders(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_folder(root: Path, split: str) -> tuple[list[Path], list[int], tuple[str, ...]]:
    """The image files of a split of a tree on disk, their labels and the classes.

    Raises:
        DataError: no such split, no class folders, an empty class folder, an image outside a
            class folder, a class not in train/.
    """
    if not (root / split).is_dir():
        below = _subfolders(root)
        if len(below) == 1 and (root / below[0] / split).is_dir():
            root = root / below[0]  # the tree one folder down
        else:
            raise _split_error(str(root), split, below)
    folder = root / split
    train = _subfolders(root / "train") if (root / "train").is_dir() else None
    classes, label = _layout(str(root), split, _subfolders(folder), train)
    files: list[Path] = []
    labels: list[int] = []
    stray = sorted(p.name for p in folder.iterdir() if p.is_file() and is_image(p.name))
    if stray:
        raise DataError(f"{folder / stray[0]}: image outside a class folder")
    for c in _subfolders(folder):
        found = sorted(p for p in (folder / c).iterdir() if p.is_file() and is_image(p.name))
        if not found:
            raise DataError(f"empty class folder {folder / c} (no images)")
        files += found
        labels += [label[c]] * len(found)
    return files, labels, classes


def read_folder(
    root: Path, split: str, *, skip_corrupt: bool = False, progress: bool = True
) -> tuple[ArrayDataset, list[str]]:
    """A split of an image-folder tree on disk, decoded into memory."""
    files, labels, classes = list_folder(root, split)
    return decode(
        [(str(p), p) for p in files],
        labels,
        classes,
        skip_corrupt=skip_corrupt,
        progress=progress,
        desc=f"decoding {split}",
    )


def list_tar(
    archive: Path,
    split: str,
    files: Iterable[PurePosixPath],
    dirs: set[PurePosixPath],
    links: set[PurePosixPath],
) -> tuple[list[PurePosixPath], list[int], tuple[str, ...]]:
    """The image members of a split of a tree in an archive, their labels and the classes.

    Args:
        archive: the archive, for messages.
        split: the split folder to read.
        files: image member paths.
        dirs: folder member paths.
        links: link member paths (not followed: an error if one sits in the split).
    """
    files = list(files)
    paths = [p for p in (*files, *dirs) if p.parts]
    tops = {p.parts[0] for p in paths}
    if split in tops:
        top: tuple[str, ...] = ()
    elif len(tops) == 1 and any(p.parts[1:2] == (split,) for p in paths):
        top = (tops.pop(),)  # the tree one folder down
    else:
        if len(tops) == 1:
            tops = {f"{p.parts[0]}/{p.parts[1]}" for p in paths if len(p.parts) > 1}
        raise _split_error(str(archive), split, tops)
    d = len(top)

    def classes_of(s: str) -> set[str]:
        # class folders are folder members at <s>/<class> or the parents of its files
        return {
            p.parts[d + 1]
            for p in paths
            if p.parts[: d + 1] == (*top, s) and len(p.parts) >= d + (2 if p in dirs else 3)
        }

    has_train = any(p.parts[: d + 1] == (*top, "train") for p in paths)
    split_classes = classes_of(split)
    train_classes = classes_of("train") if has_train else None
    classes, label = _layout(str(archive), split, split_classes, train_classes)
    for p in links:
        if p.parts[: d + 1] == (*top, split):
            raise DataError(
                f"{archive}: member {p} is a link; unpack the archive and pass the folder"
            )
    by_class: dict[str, list[PurePosixPath]] = {c: [] for c in split_classes}
    for p in files:
        if p.parts[: d + 1] != (*top, split):
            continue
        if len(p.parts) != d + 3:
            raise DataError(f"{archive}: member {p} is not at {split}/<class>/<image>")
        by_class[p.parts[d + 1]].append(p)
    members: list[PurePosixPath] = []
    labels: list[int] = []
    for c in sorted(by_class):
        if not by_class[c]:
            raise DataError(f"empty class folder {PurePosixPath(*top, split, c)} in {archive}")
        found = sorted(by_class[c], key=lambda p: p.name)
        members += found
        labels += [label[c]] * len(found)
    return members, labels, classes


def read_tar_files(
    archive: Path,
    split: str,
    files: dict[PurePosixPath, bytes],
    dirs: set[PurePosixPath],
    links: set[PurePosixPath],
    *,
    skip_corrupt: bool = False,
    progress: bool = True,
) -> tuple[ArrayDataset, list[str]]:
    """A split of an image-folder tree from an archive's members (read by files.iter_tar)."""
    members, labels, classes = list_tar(archive, split, files, dirs, links)
    return decode(
        [(f"{archive}:{p}", files[p]) for p in members],
        labels,
        classes,
        skip_corrupt=skip_corrupt,
        progress=progress,
        desc=f"decoding {split}",
    )
