"""Image folders read image by image, for data that does not fit in memory (ImageNet).

    stream = ImageStream.open("imagenet/", "train")   # root/<split>/<class>/<image>, or a .tar
    img = stream.read(0)                                # uint8 3 x H x W, the file's own size
    data = StreamDataset(stream, TrainCrop(224, ...))   # for a torch DataLoader

Only the index (a path or an offset in the archive, and a label, per image) is held in
memory: 1.28 million ImageNet paths are about 200 MB of Python strings, the decoded images
would be 200 GB. Images are decoded when read, by Pillow; grey, palette and CMYK images become
RGB.

An archive is read in place: an uncompressed .tar gives each member's offset, so any image
can be read with one seek. A compressed archive (.tar.gz) cannot be read at random; it goes
through the in-memory path (load.py) or must be unpacked.

The in-memory path (load.py: one uint8 tensor, batched augmentation on the device) stays the
one for small images; `choose_mode` picks between them by image size and dataset size.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import tarfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from cnnlab.data import imagefolder
from cnnlab.data.dataset import DataError
from cnnlab.data.files import ARCHIVE_ERRORS, is_archive, member_path

__all__ = [
    "DATA_MODES", "ImageStream", "StreamDataset", "choose_mode", "loader", "whole_images",
]  # fmt: skip

DATA_MODES = ("auto", "memory", "stream")

# choose_mode's "auto": images no larger than this (per side), all of one size, and no more
# than MEMORY_BYTES decoded, go in memory (CIFAR: 32 x 32, 180 MB); anything else streams.
MEMORY_SIDE = 64
MEMORY_BYTES = 2 << 30
_SIZE_PROBES = 16  # images whose headers choose_mode reads


@dataclass(frozen=True, eq=False)
class ImageStream:
    """The images of one split of an image-folder tree, read when asked.

    Attributes:
        source: the folder or the uncompressed .tar.
        split: the split folder ("train", "val", ...).
        names: a name per image for messages (its path, or archive:member).
        locations: a Path per image, or (offset, size) of its bytes in the archive.
        labels: int64 labels, indices into `classes`.
        classes: the class folders of train/ (or of this split when there is no train/), sorted.
    """

    source: Path
    split: str
    names: tuple[str, ...]
    locations: tuple[Path | tuple[int, int], ...]
    labels: Tensor
    classes: tuple[str, ...]
    skip_corrupt: bool = False

    @classmethod
    def open(
        cls, spec: str | os.PathLike, split: str, *, skip_corrupt: bool = False
    ) -> ImageStream:
        """Index a split of a folder tree or of an uncompressed .tar of one.

        Raises:
            DataError: no such path or split, a compressed archive, an empty class folder.
        """
        path = Path(spec).expanduser()
        if path.is_dir():
            files, labels, classes = imagefolder.list_folder(path, split)
            names = tuple(str(p) for p in files)
            locations: tuple[Path | tuple[int, int], ...] = tuple(files)
        elif path.is_file() and path.name.lower().endswith(".tar"):
            members, offsets, labels, classes = _index_tar(path, split)
            names = tuple(f"{path}:{m}" for m in members)
            locations = tuple(offsets)
        elif path.is_file() and is_archive(path):
            raise DataError(
                f"{path}: a compressed archive cannot be read image by image; unpack it "
                "(tar xf) and pass the folder, or recompress it as an uncompressed .tar"
            )
        else:
            raise DataError(f"{path}: no such folder or .tar archive of an image-folder tree")
        return cls(
            path, split, names, locations, torch.tensor(labels, dtype=torch.int64), classes,
            skip_corrupt,
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return (
            f"ImageStream({self.source}, {self.split}: {len(self)} images, "
            f"{len(self.classes)} classes)"
        )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def read_bytes(self, i: int) -> bytes:
        where = self.locations[i]
        if isinstance(where, Path):
            return where.read_bytes()
        offset, size = where
        with open(self.source, "rb") as f:
            f.seek(offset)
            return f.read(size)

    def read(self, i: int) -> Tensor:
        """Image `i` decoded: uint8 RGB, 3 x H x W.

        Raises:
            DataError: the file does not decode (naming it), unless `skip_corrupt`, when the
                next readable image in the index stands in for it (with a warning).
        """
        for j in range(i, i + len(self)):
            k = j % len(self)
            try:
                return decode(self.read_bytes(k), self.names[k])
            except DataError:
                if not self.skip_corrupt:
                    raise
                warnings.warn(f"skipped unreadable image {self.names[k]}", stacklevel=2)
        raise DataError(f"no readable image in {self.source} ({self.split})")

    def image_size(self, i: int) -> tuple[int, int]:
        """(width, height) of image `i` from its header alone (Pillow reads no pixels)."""
        try:
            with Image.open(io.BytesIO(self.read_bytes(i))) as im:
                return im.size
        except imagefolder.DECODE_ERRORS as e:
            raise DataError(f"cannot read image {self.names[i]} ({e})") from e

    def subset(self, index: Sequence[int]) -> ImageStream:
        """The images at these positions, as a stream of their own."""
        pick = list(index)
        return ImageStream(
            self.source, self.split, tuple(self.names[i] for i in pick),
            tuple(self.locations[i] for i in pick), self.labels[pick], self.classes,
            self.skip_corrupt,
        )  # fmt: skip


def decode(data: bytes, name: str) -> Tensor:
    """uint8 RGB 3 x H x W from an encoded image, by Pillow (grey, palette, CMYK -> RGB).

    (torchvision.io's decoders are deprecated since torchvision 0.29 in favour of TorchCodec;
    Pillow reads every format the image folders hold.)
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            rgb = im.convert("RGB")
    except imagefolder.DECODE_ERRORS as e:
        raise DataError(
            f"cannot read image {name} ({e}); pass --skip-corrupt to train past unreadable images"
        ) from e
    pixels = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
    return pixels.view(rgb.height, rgb.width, 3).permute(2, 0, 1).contiguous()


def _index_tar(
    path: Path, split: str
) -> tuple[list[PurePosixPath], list[tuple[int, int]], list[int], tuple[str, ...]]:
    """Members, (offset, size) of their bytes, labels and classes of a split in a .tar."""
    where: dict[PurePosixPath, tuple[int, int]] = {}
    dirs: set[PurePosixPath] = set()
    links: set[PurePosixPath] = set()
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                p = member_path(m, path)
                if m.isdir():
                    dirs.add(p)
                elif m.issym() or m.islnk():
                    links.add(p)
                elif m.isfile() and imagefolder.is_image(p.name):
                    where[p] = (m.offset_data, m.size)
    except ARCHIVE_ERRORS as e:
        raise DataError(f"{path}: truncated or corrupt archive ({e})") from e
    members, labels, classes = imagefolder.list_tar(path, split, where, dirs, links)
    return members, [where[m] for m in members], labels, classes


class StreamDataset(torch.utils.data.Dataset):
    """A DataLoader's view of a stream: item (index, seed) -> (transformed uint8 image, label).

    The transform gets a torch.Generator seeded with the item's seed, so what a sample looks
    like depends on the seed alone, not on which worker process decodes it.
    """

    def __init__(
        self, stream: ImageStream, transform: Callable[[Tensor, torch.Generator], Tensor]
    ) -> None:
        self.stream = stream
        self.transform = transform

    def __len__(self) -> int:
        return len(self.stream)

    def __getitem__(self, item: tuple[int, int]) -> tuple[Tensor, Tensor]:
        i, seed = item
        g = torch.Generator().manual_seed(seed)
        return self.transform(self.stream.read(i), g), self.stream.labels[i]


def loader(dataset: StreamDataset, workers: int, **options: Any) -> torch.utils.data.DataLoader:
    """A DataLoader whose `workers` processes are forked from a server with one thread.

    DataLoader's default on Linux forks the training process itself, with its other threads
    (gloo's under torchrun, OpenMP's, a progress bar's). Where one of them holds a lock at that
    instant, the child inherits it held: under Python 3.11 a worker of a gloo process hung so,
    in PyOS_AfterFork_Child, on the interpreter's list of thread states, before running a
    line of Python (tests/test_ddp.py's streamed run: once in CI, twice in 160 runs here).
    multiprocessing's forkserver is a fresh process with one thread, started once per process;
    it has imported the decoding and cropping code (this module), so a worker starts in
    milliseconds and inherits no held lock. Where there is no forkserver (Windows), the
    platform's default.
    """
    context = None
    if workers > 0 and "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])  # read only when the server starts
    return torch.utils.data.DataLoader(
        dataset, num_workers=workers, multiprocessing_context=context, **options
    )


def _as_decoded(img: Tensor, g: torch.Generator) -> Tensor:
    return img


def whole_images(stream: ImageStream, workers: int = 0) -> Iterator[tuple[Tensor, int]]:
    """(image, label) of every image in order, each decoded at its own size by `workers`."""
    items = [(i, 0) for i in range(len(stream))]
    for img, label in loader(
        StreamDataset(stream, _as_decoded), workers, sampler=items, batch_size=None
    ):
        yield img, int(label)


def choose_mode(spec: str | os.PathLike, split: str = "train") -> str:
    """ "memory" or "stream" for a dataset, by its images' size and number ("auto").

    Official CIFAR archives and compressed archives go in memory; a folder or an uncompressed
    .tar goes in memory when the images whose headers we read are all one size of at most
    MEMORY_SIDE pixels and all of them would take at most MEMORY_BYTES decoded; else it
    streams.
    """
    path = Path(spec).expanduser()
    if not (path.is_dir() or (path.is_file() and path.name.lower().endswith(".tar"))):
        return "memory"
    from cnnlab.data import cifar  # an official CIFAR folder is read in memory

    if path.is_dir() and any(
        cifar.folder_kind(f) is not None
        for a in cifar.ARCHIVES.values()
        for f in (path, path / a.folder)
        if f.is_dir()
    ):
        return "memory"
    try:
        stream = ImageStream.open(path, split)
    except DataError:
        return "memory"  # not an image-folder tree: the in-memory readers say what is wrong
    n = len(stream)
    probes = sorted({i * n // _SIZE_PROBES for i in range(min(n, _SIZE_PROBES))})
    sizes = {stream.image_size(i) for i in probes}
    if len(sizes) == 1:
        w, h = sizes.pop()
        if max(w, h) <= MEMORY_SIDE and n * 3 * w * h <= MEMORY_BYTES:
            return "memory"
    return "stream"
