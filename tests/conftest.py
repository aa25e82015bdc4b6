"""Shared fixtures: tiny datasets the tests build themselves, and a local HTTP server.

tiny_cifar_archive(...)   an archive (or extracted folder) in the official CIFAR python format
tiny_image_folder(...)    root/<split>/<class>/<n>.png|jpg with known pixels
pack_tar(root, dest)      a .tar.gz of a folder's contents
local_http_server(dir)    serve a folder on 127.0.0.1 (a free port); returns its base URL
load_benchmark(name)      a script of benchmarks/ (not a package) as a module
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import io
import pickle
import sys
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """benchmarks/<name>.py as a module (benchmarks/ is not a package), registered in
    sys.modules under its name, where dataclasses look their module up."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


@dataclass(frozen=True)
class TinyDataset:
    """What a fixture wrote: where, and the images and labels a reader must return."""

    path: Path
    classes: tuple[str, ...]
    splits: dict[str, tuple[Tensor, Tensor]]  # split -> (uint8 N x 3 x H x W, int64 N)


def _balanced_labels(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % num_classes).astype(np.int64)


@pytest.fixture
def tiny_cifar_archive(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., TinyDataset]:
    """Factory: make(dest_dir=None, *, n_train=20, n_test=10, cifar100=False, seed=0,
    extracted=False) writes cifar-10-python.tar.gz (or cifar-100-python.tar.gz, or with
    extracted=True the folder cifar-10-batches-py/) laid out like the official one."""

    def make(
        dest_dir: Path | None = None,
        *,
        n_train: int = 20,
        n_test: int = 10,
        cifar100: bool = False,
        seed: int = 0,
        extracted: bool = False,
    ) -> TinyDataset:
        dest_dir = dest_dir or tmp_path_factory.mktemp("cifar")
        rng = np.random.default_rng(seed)
        num_classes = 100 if cifar100 else 10
        classes = tuple(f"class{i:02d}" for i in range(100)) if cifar100 else CIFAR10_CLASSES
        folder = "cifar-100-python" if cifar100 else "cifar-10-batches-py"
        label_key = "fine_labels" if cifar100 else "labels"
        splits, members = {}, {}
        for split, n in (("train", n_train), ("test", n_test)):
            data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            labels = _balanced_labels(n, num_classes, rng)
            splits[split] = (torch.from_numpy(data.reshape(n, 3, 32, 32)), torch.from_numpy(labels))
            if cifar100:
                names = {"train": ["train"], "test": ["test"]}[split]
            else:
                names = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
                names = names[split]
            for name, rows in zip(names, np.array_split(np.arange(n), len(names)), strict=True):
                batch = {
                    "batch_label": f"{name} of 5",
                    label_key: labels[rows].tolist(),
                    "data": data[rows],
                    "filenames": [f"img_{i}.png" for i in rows],
                }
                if cifar100:
                    batch["coarse_labels"] = (labels[rows] // 5).tolist()
                members[name] = pickle.dumps(batch, protocol=2)
        if cifar100:
            meta = {"fine_label_names": list(classes), "coarse_label_names": ["c"] * 20}
            members["meta"] = pickle.dumps(meta, protocol=2)
        else:
            meta = {"label_names": list(classes), "num_cases_per_batch": 10000, "num_vis": 3072}
            members["batches.meta"] = pickle.dumps(meta, protocol=2)
        members["readme.html"] = b"<html>tiny</html>"
        if extracted:
            root = dest_dir / folder
            root.mkdir()
            for name, data in members.items():
                (root / name).write_bytes(data)
            return TinyDataset(root, classes, splits)
        path = dest_dir / ("cifar-100-python.tar.gz" if cifar100 else "cifar-10-python.tar.gz")
        with tarfile.open(path, "w:gz") as tar:
            info = tarfile.TarInfo(folder)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
            for name, data in members.items():
                info = tarfile.TarInfo(f"{folder}/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return TinyDataset(path, classes, splits)

    return make


@pytest.fixture
def tiny_image_folder(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., TinyDataset]:
    """Factory: make(root=None, *, classes=("cat", "dog", "frog"), counts={"train": 4,
    "test": 2}, fmt="png", size=(32, 32), seed=0) writes root/<split>/<class>/<k>.<fmt>.

    The returned pixels are those of the files as written (for JPEG: as Pillow reads them)."""

    def make(
        root: Path | None = None,
        *,
        classes: tuple[str, ...] = ("cat", "dog", "frog"),
        counts: dict[str, int] | None = None,
        fmt: str = "png",
        size: tuple[int, int] = (32, 32),
        seed: int = 0,
    ) -> TinyDataset:
        root = root or tmp_path_factory.mktemp("folder") / "data"
        counts = counts or {"train": 4, "test": 2}
        rng = np.random.default_rng(seed)
        splits = {}
        for split, n in counts.items():
            images, labels = [], []
            for label, c in enumerate(sorted(classes)):
                (root / split / c).mkdir(parents=True, exist_ok=True)
                for k in range(n):
                    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                    file = root / split / c / f"{k:04d}.{fmt}"
                    Image.fromarray(pixels).save(file)
                    if fmt != "png":  # lossy: what a reader must return is what Pillow reads
                        with Image.open(file) as im:
                            pixels = np.array(im.convert("RGB"))
                    images.append(torch.from_numpy(pixels).permute(2, 0, 1))
                    labels.append(label)
            splits[split] = (torch.stack(images), torch.tensor(labels))
        return TinyDataset(root, tuple(sorted(classes)), splits)

    return make


@pytest.fixture
def pack_tar() -> Callable[..., Path]:
    """pack_tar(root, dest, prefix="") writes dest (.tar.gz) holding root's contents under
    prefix (e.g. "mydata" for an archive whose tree sits one folder down)."""

    def pack(root: Path, dest: Path, prefix: str = "") -> Path:
        with tarfile.open(dest, "w:gz") as tar:
            for child in sorted(root.iterdir()):
                tar.add(child, arcname=f"{prefix}/{child.name}" if prefix else child.name)
        return dest

    return pack


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def local_http_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path], str]]:
    """serve(directory) -> "http://127.0.0.1:PORT/": a threaded server, shut down after the test.

    Proxy variables are cleared so that urllib talks to the server directly."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    servers: list[http.server.ThreadingHTTPServer] = []

    def serve(directory: Path) -> str:
        handler = functools.partial(_QuietHandler, directory=str(directory))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test: tiny batches gain nothing from a second, and on a shared
    two-core machine a busy core stalls every parallel region of a two-thread run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
