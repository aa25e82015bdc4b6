"""cnnlab.data: readers, cache, download, errors, split, statistics and augmentation.

Everything runs on tiny data the tests build (see conftest.py), except the one realdata test
that reads ../shared/datasets/cifar10-jpeg.tar.gz where it exists.
"""

from __future__ import annotations

import io
import os
import re
import socket
import tarfile
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import cnnlab.data.load as load_module
from cnnlab.data import (
    ArrayDataset,
    DataError,
    MissingSplitError,
    Normalize,
    cache_dir,
    channel_stats,
    crop_flip,
    crop_flip_params,
    load_dataset,
    mean_image,
    random_crop_flip,
    train_val_split,
)
from cnnlab.data import cifar as cifar_module
from cnnlab.data.files import file_digest

JPEG_COPY = Path(__file__).parents[2] / "shared/datasets/cifar10-jpeg.tar.gz"


def assert_same(ds: ArrayDataset, images: torch.Tensor, labels: torch.Tensor) -> None:
    assert ds.images.dtype == torch.uint8 and ds.images.is_contiguous()
    assert ds.labels.dtype == torch.int64
    assert torch.equal(ds.images, images)
    assert torch.equal(ds.labels, labels)


def cache_files(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.is_file())


def add_member(tar: tarfile.TarFile, name: str, data: bytes = b"", **fields: object) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for k, v in fields.items():
        setattr(info, k, v)
    tar.addfile(info, io.BytesIO(data) if data else None)


# --- reading each format -------------------------------------------------------------------


def test_cifar10_archive(tiny_cifar_archive, tmp_path):
    tiny = tiny_cifar_archive()
    for split in ("train", "test"):
        ds = load_dataset(tiny.path, split, cache_dir=tmp_path, progress=False)
        assert_same(ds, *tiny.splits[split])
        assert ds.classes == tiny.classes and ds.num_classes == 10


def test_cifar10_extracted_folder_and_its_parent(tiny_cifar_archive, tmp_path):
    tiny = tiny_cifar_archive(extracted=True)
    for path in (tiny.path, tiny.path.parent):
        ds = load_dataset(path, "test", cache_dir=tmp_path / path.name, progress=False)
        assert_same(ds, *tiny.splits["test"])


def test_cifar100_fine_labels(tiny_cifar_archive, tmp_path):
    tiny = tiny_cifar_archive(cifar100=True, n_train=200, n_test=100)
    ds = load_dataset(tiny.path, "train", cache_dir=tmp_path, progress=False)
    assert_same(ds, *tiny.splits["train"])
    assert len(ds.classes) == 100 and ds.classes[7] == "class07"


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_image_folder(tiny_image_folder, tmp_path, fmt):
    tiny = tiny_image_folder(fmt=fmt)
    for split in ("train", "test"):
        ds = load_dataset(tiny.path, split, cache_dir=tmp_path, progress=False)
        images, labels = tiny.splits[split]
        assert ds.classes == ("cat", "dog", "frog")
        assert_same(ds, images, labels)


@pytest.mark.parametrize("prefix", ["", "mydata"])
def test_image_folder_archive(tiny_image_folder, pack_tar, tmp_path, prefix):
    tiny = tiny_image_folder()
    archive = pack_tar(tiny.path, tmp_path / "data.tar.gz", prefix=prefix)
    (tmp_path / "cache").mkdir()
    for split in ("train", "test"):
        ds = load_dataset(archive, split, cache_dir=tmp_path / "cache", progress=False)
        assert_same(ds, *tiny.splits[split])
        assert ds.classes == tiny.classes


def test_test_split_uses_train_classes(tiny_image_folder, tmp_path):
    # test/ lacks "dog": its labels must still index train's class list
    tiny = tiny_image_folder(counts={"train": 2})
    tiny_image_folder(tiny.path, classes=("cat", "frog"), counts={"test": 1})
    ds = load_dataset(tiny.path, "test", cache_dir=tmp_path, progress=False)
    assert ds.classes == ("cat", "dog", "frog")
    assert ds.labels.tolist() == [0, 2]


# --- the cache -----------------------------------------------------------------------------


def test_cache_is_reused(tiny_cifar_archive, tiny_image_folder, tmp_path, monkeypatch):
    sources = [tiny_cifar_archive().path, tiny_image_folder().path]
    first = [load_dataset(s, "train", cache_dir=tmp_path, progress=False) for s in sources]

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(load_module, "decode_source", no_decoding)
    for source, ds in zip(sources, first, strict=True):
        again = load_dataset(source, "train", cache_dir=tmp_path, progress=False)
        assert_same(again, ds.images, ds.labels)
        assert again.classes == ds.classes


def test_cache_is_keyed_by_content(tiny_cifar_archive, tmp_path):
    a = tiny_cifar_archive(tmp_path, seed=1)
    ds_a = load_dataset(a.path, "train", cache_dir=tmp_path / "cache", progress=False)
    a.path.unlink()
    b = tiny_cifar_archive(tmp_path, seed=2)  # same path, other content
    ds_b = load_dataset(b.path, "train", cache_dir=tmp_path / "cache", progress=False)
    assert_same(ds_a, *a.splits["train"])
    assert_same(ds_b, *b.splits["train"])
    assert len(cache_files(tmp_path / "cache")) == 2


def test_folder_cache_key_follows_files(tiny_image_folder, tmp_path):
    tiny = tiny_image_folder()
    load_dataset(tiny.path, "train", cache_dir=tmp_path, progress=False)
    victim = tiny.path / "train" / "cat" / "0000.png"
    victim.write_bytes((tiny.path / "train" / "dog" / "0000.png").read_bytes())
    ds = load_dataset(tiny.path, "train", cache_dir=tmp_path, progress=False)
    assert torch.equal(ds.images[0], tiny.splits["train"][0][4])  # now a copy of dog/0000
    assert len(cache_files(tmp_path)) == 2


def test_cache_writes_are_atomic(tiny_cifar_archive, tmp_path, monkeypatch):
    tiny = tiny_cifar_archive()
    load_dataset(tiny.path, "train", cache_dir=tmp_path, progress=False)
    (name,) = cache_files(tmp_path)
    assert name.endswith("-train.pt")

    def disk_full(obj, f):
        f.write(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        load_dataset(tiny.path, "test", cache_dir=tmp_path, progress=False)
    assert cache_files(tmp_path) == [name]  # no temporary file, no half-written test cache


def test_damaged_cache_file_is_rebuilt(tiny_cifar_archive, tmp_path):
    tiny = tiny_cifar_archive()
    load_dataset(tiny.path, "test", cache_dir=tmp_path, progress=False)
    (file,) = (tmp_path / "tensors").iterdir()
    file.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="decoding again"):
        ds = load_dataset(tiny.path, "test", cache_dir=tmp_path, progress=False)
    assert_same(ds, *tiny.splits["test"])


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("CNNLAB_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "cnnlab"


# --- download ------------------------------------------------------------------------------


def serve_archive(tiny_cifar_archive, local_http_server, monkeypatch, tmp_path, md5=None):
    tiny = tiny_cifar_archive(tmp_path / "server")
    url = local_http_server(tmp_path / "server")
    monkeypatch.setenv("CNNLAB_CIFAR_URL", url)
    official = cifar_module.ARCHIVES["cifar10"]
    md5 = md5 or file_digest(tiny.path, "md5")
    monkeypatch.setitem(
        cifar_module.ARCHIVES,
        "cifar10",
        cifar_module.CifarArchive(**{**vars(official), "md5": md5}),
    )
    return tiny


@pytest.fixture
def server_dir(tmp_path: Path) -> Path:
    (tmp_path / "server").mkdir()
    return tmp_path


def test_download(tiny_cifar_archive, local_http_server, monkeypatch, server_dir):
    tiny = serve_archive(tiny_cifar_archive, local_http_server, monkeypatch, server_dir)
    cache = server_dir / "cache"
    ds = load_dataset("cifar10", "test", cache_dir=cache, progress=False)
    assert_same(ds, *tiny.splits["test"])
    assert (cache / "cifar-10-python.tar.gz").read_bytes() == tiny.path.read_bytes()
    assert not [n for n in cache_files(cache) if n.startswith(".")]


def test_download_md5_mismatch(tiny_cifar_archive, local_http_server, monkeypatch, server_dir):
    serve_archive(tiny_cifar_archive, local_http_server, monkeypatch, server_dir, md5="0" * 32)
    cache = server_dir / "cache"
    with pytest.raises(DataError, match="md5 .* expected 0{32}; removed it"):
        load_dataset("cifar10", cache_dir=cache, progress=False)
    assert cache_files(cache) == []


def test_cached_archive_with_bad_md5(tiny_cifar_archive, monkeypatch, tmp_path):
    tiny_cifar_archive(tmp_path)  # a stray file where the official archive belongs
    with pytest.raises(DataError, match="is not the official c58f"):
        load_dataset("cifar10", cache_dir=tmp_path, download=False, progress=False)


def test_download_without_network(monkeypatch, tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("CNNLAB_CIFAR_URL", f"http://127.0.0.1:{port}/")
    for var in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(var, raising=False)
    target = tmp_path / "cifar-10-python.tar.gz"
    with pytest.raises(DataError, match=f"cannot download .*put .* at {re.escape(str(target))}"):
        load_dataset("cifar10", cache_dir=tmp_path, progress=False)
    assert cache_files(tmp_path) == []
    with pytest.raises(DataError, match=f"{re.escape(str(target))} does not exist and downloading"):
        load_dataset("cifar10", cache_dir=tmp_path, download=False)


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fields"),
    [
        ("../evil.png", {}),
        ("/etc/evil.png", {}),
        ("train/cat/../../../evil.png", {}),
        ("train/cat/link.png", {"type": tarfile.SYMTYPE, "linkname": "../../../etc/passwd"}),
        ("train/cat/hard.png", {"type": tarfile.LNKTYPE, "linkname": "/etc/passwd"}),
    ],
)
def test_escaping_tar_member_rejected(tiny_image_folder, tmp_path, name, fields):
    tiny = tiny_image_folder()
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tiny.path / "train", arcname="train")
        add_member(tar, name, b"" if fields else b"x", **fields)
    with pytest.raises(DataError, match="unsafe member path|links outside the archive"):
        load_dataset(archive, cache_dir=tmp_path / "cache", progress=False)


def test_corrupt_image_named_or_skipped(tiny_image_folder, tmp_path):
    tiny = tiny_image_folder()
    bad = [tiny.path / "train" / "dog" / "0001.png", tiny.path / "train" / "frog" / "0003.png"]
    bad[0].write_bytes(b"not a png")
    bad[1].write_bytes(bad[1].read_bytes()[:100])  # truncated
    with pytest.raises(DataError, match=f"cannot read image {bad[0]}"):
        load_dataset(tiny.path, cache_dir=tmp_path, progress=False)
    with pytest.warns(UserWarning, match="skipped 2 unreadable images"):
        ds = load_dataset(tiny.path, cache_dir=tmp_path, skip_corrupt=True, progress=False)
    assert len(ds) == 10 and ds.labels.bincount().tolist() == [4, 3, 3]
    # the cache remembers the skips: without skip_corrupt it is still an error
    with pytest.raises(DataError, match=f"cannot read image {bad[0]} \\(2 unreadable"):
        load_dataset(tiny.path, cache_dir=tmp_path, progress=False)


def test_corrupt_image_in_archive_named(tiny_image_folder, pack_tar, tmp_path):
    tiny = tiny_image_folder()
    (tiny.path / "test" / "cat" / "0000.png").write_bytes(b"\x89PNG garbage")
    archive = pack_tar(tiny.path, tmp_path / "data.tgz")
    with pytest.raises(DataError, match="data.tgz:test/cat/0000.png"):
        load_dataset(archive, "test", cache_dir=tmp_path / "cache", progress=False)


def test_empty_class_folder(tiny_image_folder, pack_tar, tmp_path):
    tiny = tiny_image_folder()
    (tiny.path / "train" / "zebra").mkdir()
    with pytest.raises(DataError, match="empty class folder .*train/zebra"):
        load_dataset(tiny.path, cache_dir=tmp_path, progress=False)
    archive = pack_tar(tiny.path, tmp_path / "data.tar.gz")
    with pytest.raises(DataError, match="empty class folder train/zebra"):
        load_dataset(archive, cache_dir=tmp_path, progress=False)


def test_missing_split_folder(tiny_image_folder, pack_tar, tmp_path):
    tiny = tiny_image_folder(counts={"train": 1})
    # A DataError of its own kind, so that a missing val/ or test/ can be optional.
    with pytest.raises(MissingSplitError, match="no split folder 'test' \\(found: train\\)"):
        load_dataset(tiny.path, "test", cache_dir=tmp_path, progress=False)
    archive = pack_tar(tiny.path, tmp_path / "data.tar.gz", prefix="top")
    with pytest.raises(DataError, match="no split folder 'test' \\(found: top/train\\)"):
        load_dataset(archive, "test", cache_dir=tmp_path, progress=False)


def test_images_of_another_size(tiny_image_folder, tmp_path):
    tiny = tiny_image_folder(counts={"train": 2})
    tiny_image_folder(tiny.path, classes=("dog",), counts={"train": 3}, size=(24, 32))
    with pytest.raises(DataError, match="train/dog/0000.png: image is 24x32, expected 32x32"):
        load_dataset(tiny.path, cache_dir=tmp_path, progress=False)


@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_truncated_archive(tiny_cifar_archive, tmp_path, keep):
    tiny = tiny_cifar_archive()
    data = tiny.path.read_bytes()
    tiny.path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DataError, match="truncated or corrupt archive"):
        load_dataset(tiny.path, cache_dir=tmp_path, progress=False)
    assert cache_files(tmp_path) == []


def test_incomplete_official_archive(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        add_member(tar, "cifar-10-batches-py/batches.meta", b"x")
    with pytest.raises(DataError, match="missing data_batch_1, .*data_batch_5"):
        load_dataset(archive, cache_dir=tmp_path, progress=False)


def test_pickle_cannot_run_code(tiny_cifar_archive, tmp_path):
    tiny = tiny_cifar_archive(extracted=True)
    # a pickle that would call os.system: the reader must refuse it, not run it
    (tiny.path / "test_batch").write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")
    with pytest.raises(DataError, match="test_batch: not a CIFAR python batch .*os.system"):
        load_dataset(tiny.path, "test", cache_dir=tmp_path, progress=False)


@pytest.mark.parametrize("spec", ["cifar11", "no/such/folder", "cifar-10-python.zip"])
def test_unknown_spec(tmp_path, monkeypatch, spec):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cifar-10-python.zip").write_bytes(b"PK")
    with pytest.raises(DataError, match="unknown dataset|not a folder nor"):
        load_dataset(spec, cache_dir=tmp_path, progress=False)


def test_unknown_split(tiny_cifar_archive, tmp_path):
    with pytest.raises(DataError, match="no split 'val'"):
        load_dataset(tiny_cifar_archive().path, "val", cache_dir=tmp_path, progress=False)


# --- the 45k/5k split ----------------------------------------------------------------------


def test_train_val_split_45k_5k():
    labels = torch.randperm(50_000, generator=torch.Generator().manual_seed(0)) % 10
    train, val = train_val_split(labels)
    assert len(train) == 45_000 and len(val) == 5_000
    assert torch.equal(torch.sort(torch.cat([train, val])).values, torch.arange(50_000))
    assert labels[val].bincount().tolist() == [500] * 10
    # the documented rule: the 10th, 20th, ... image of each class in dataset order
    cats = (labels == 3).nonzero().squeeze(1)
    assert torch.equal(val[labels[val] == 3], cats[9::10])
    again = train_val_split(labels.clone())
    assert torch.equal(again[0], train) and torch.equal(again[1], val)


def test_load_train45k_val5k(tiny_cifar_archive, tmp_path):
    tiny = tiny_cifar_archive(n_train=200)
    images, labels = tiny.splits["train"]
    train = load_dataset(tiny.path, "train45k", cache_dir=tmp_path, progress=False)
    val = load_dataset(tiny.path, "val5k", cache_dir=tmp_path, progress=False)
    train_index, val_index = train_val_split(labels)
    assert len(train) == 180 and len(val) == 20
    assert_same(train, images[train_index], labels[train_index])
    assert_same(val, images[val_index], labels[val_index])
    assert len(cache_files(tmp_path)) == 1  # both come from the cached train split


# --- statistics and normalisation ----------------------------------------------------------


def test_channel_stats_known_values():
    images = torch.zeros(4, 3, 2, 2, dtype=torch.uint8)
    images[:, 0] = 255  # red: all 1.0
    images[:2, 1] = 255  # green: half 0, half 1 -> mean 0.5, std 0.5
    images[:, 2, 0, 0] = 51  # blue: one pixel in four at 0.2
    mean, std = channel_stats(images)
    assert mean.dtype == torch.float32 and mean.shape == (3,)
    torch.testing.assert_close(mean, torch.tensor([1.0, 0.5, 0.05]))
    torch.testing.assert_close(std, torch.tensor([0.0, 0.5, (0.04 / 4 - 0.05**2) ** 0.5]))
    x = torch.randint(0, 256, (3000, 3, 8, 8), dtype=torch.uint8)
    ref = x.double().div(255).transpose(0, 1).reshape(3, -1)
    mean, std = channel_stats(x)  # spans several chunks
    torch.testing.assert_close(mean, ref.mean(1).float())
    torch.testing.assert_close(std, ref.std(1, unbiased=False).float())
    torch.testing.assert_close(channel_stats(x.float() / 255)[0], mean)


def test_normalize_channel_and_pixel():
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    y = Normalize.fit(x)(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std((0, 2, 3), unbiased=False), torch.ones(3))
    pixel = Normalize.fit(x, mode="pixel")
    torch.testing.assert_close(pixel.mean[0], mean_image(x))
    z = pixel(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(3, 8, 8), atol=1e-6, rtol=0)
    torch.testing.assert_close(z, x / 255 - x.double().mean(0).div(255).float())
    torch.testing.assert_close(pixel(x.float() / 255), z)  # float input is in 0..1
    assert Normalize.fit(x)(x.to(torch.bfloat16) / 255).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="'channel', 'pixel'"):
        Normalize.fit(x, mode="image")


# --- augmentation --------------------------------------------------------------------------


def reference_crop_flip(x, top, left, flipped, padding):
    """One image at a time, the obvious way."""
    out = []
    for i in range(x.shape[0]):
        padded = F.pad(x[i], (padding,) * 4)
        window = padded[:, top[i] : top[i] + x.shape[2], left[i] : left[i] + x.shape[3]]
        out.append(window.flip(2) if flipped[i] else window)
    return torch.stack(out)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_crop_flip_matches_per_image_reference(dtype):
    x = torch.randint(0, 256, (64, 3, 32, 32)).to(dtype)
    params = crop_flip_params(64, generator=torch.Generator().manual_seed(1))
    out = crop_flip(x, *params)
    assert out.dtype == dtype and out.shape == x.shape
    assert torch.equal(out, reference_crop_flip(x, *params, padding=4))
    out = random_crop_flip(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, reference_crop_flip(x, *params, padding=4))


def test_crops_are_windows_of_the_padded_image():
    # independent of the parameters: search all 81 windows and both flips for each output
    x = torch.randint(1, 256, (16, 3, 32, 32), dtype=torch.uint8)
    out = random_crop_flip(x, generator=torch.Generator().manual_seed(2))
    padded = F.pad(x, (4, 4, 4, 4))
    windows = padded.unfold(2, 32, 1).unfold(3, 32, 1)  # N x 3 x 9 x 9 x 32 x 32
    for i in range(16):
        plain = (windows[i] == out[i][:, None, None]).all(-1).all(-1).all(0)
        mirrored = (windows[i] == out[i].flip(2)[:, None, None]).all(-1).all(-1).all(0)
        assert plain.sum() + mirrored.sum() == 1


def test_crop_flip_statistics():
    n = 20_000
    top, left, flipped = crop_flip_params(n, generator=torch.Generator().manual_seed(3))
    assert abs(flipped.float().mean().item() - 0.5) < 0.02  # 4 sigma is 0.014
    counts = torch.bincount(top * 9 + left, minlength=81)
    assert counts.numel() == 81 and counts.min() > 0.7 * n / 81  # every offset, near uniform
    # the crop moves the image: an all-ones image keeps all ones only in the centre crop
    ones = torch.ones(2000, 1, 32, 32)
    out = random_crop_flip(ones, generator=torch.Generator().manual_seed(4))
    centred = (out == 1).flatten(1).all(1).float().mean().item()
    assert abs(centred - 1 / 81) < 0.008
    # no padding, no flip: the identity
    x = torch.rand(4, 3, 32, 32)
    assert torch.equal(random_crop_flip(x, padding=0, flip=False), x)


def test_reflect_padding_mirrors_the_border_into_the_padding():
    # Reference by indices: padded position j (from -p) reads row -j above the image and
    # 2 (H - 1) - j below it, the border row itself not repeated.
    x = torch.randint(0, 256, (32, 3, 12, 10), dtype=torch.uint8)
    top, left, flipped = crop_flip_params(32, padding=3, generator=torch.Generator().manual_seed(6))
    out = crop_flip(x, top, left, flipped, padding=3, mode="reflect")

    def reflect(j, n):
        return j.abs().clamp_max(2 * (n - 1) - j)

    for i in range(32):
        rows = reflect(torch.arange(12) + top[i] - 3, 12)
        cols = reflect(torch.arange(10) + left[i] - 3, 10)
        window = x[i][:, rows][:, :, cols]
        assert torch.equal(out[i], window.flip(2) if flipped[i] else window), i
    # the centre window needs no padding: zeros or reflect, the image itself
    centre, unflipped = torch.full((32,), 3), torch.zeros(32, dtype=torch.bool)
    for mode in ("zeros", "reflect"):
        assert torch.equal(crop_flip(x, centre, centre, unflipped, 3, mode), x)
    # no pixel of a reflect-padded crop of a bright image is black
    assert (crop_flip(x.clamp_min(1), top, left, flipped, padding=3, mode="reflect") > 0).all()


def test_crop_flip_rejects_a_bad_pad_mode_or_a_reflection_larger_than_the_image():
    x = torch.zeros(2, 3, 4, 4)
    params = crop_flip_params(2, padding=4)
    with pytest.raises(ValueError, match="'zeros', 'reflect'"):
        crop_flip(x, *params, padding=4, mode="wrap")
    with pytest.raises(ValueError, match="reflect padding of 4 pixels.*4x4"):
        crop_flip(x, *params, padding=4, mode="reflect")


def test_crop_flip_is_deterministic_per_seed():
    x = torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8)
    a = random_crop_flip(x, generator=torch.Generator().manual_seed(5))
    b = random_crop_flip(x, generator=torch.Generator().manual_seed(5))
    c = random_crop_flip(x, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    channels_last = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(
        random_crop_flip(channels_last, generator=torch.Generator().manual_seed(5)), a
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_crop_flip_on_cuda_matches_cpu():
    x = torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8)
    cpu = random_crop_flip(x, generator=torch.Generator().manual_seed(7))
    cuda = random_crop_flip(x.cuda(), generator=torch.Generator().manual_seed(7))
    assert cuda.device.type == "cuda" and torch.equal(cuda.cpu(), cpu)


# --- real data -----------------------------------------------------------------------------


@pytest.mark.realdata
def test_cifar10_jpeg_copy(tmp_path):
    if not JPEG_COPY.is_file():
        pytest.skip(f"{JPEG_COPY} not present")
    start = time.perf_counter()
    train = load_dataset(JPEG_COPY, "train", cache_dir=tmp_path, progress=False)
    test = load_dataset(JPEG_COPY, "test", cache_dir=tmp_path, progress=False)
    print(f"decoded 60,000 JPEGs in {time.perf_counter() - start:.1f} s")
    assert train.images.shape == (50_000, 3, 32, 32) and test.images.shape == (10_000, 3, 32, 32)
    assert (
        train.classes
        == test.classes
        == (
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
    )
    assert train.labels.bincount().tolist() == [5000] * 10
    assert test.labels.bincount().tolist() == [1000] * 10
    mean, std = channel_stats(train.images)  # the dataset README's figures
    torch.testing.assert_close(mean, torch.tensor([0.4913, 0.4821, 0.4465]), atol=2e-4, rtol=0)
    torch.testing.assert_close(std, torch.tensor([0.2452, 0.2428, 0.2606]), atol=2e-4, rtol=0)
    assert len(load_dataset(JPEG_COPY, "val5k", cache_dir=tmp_path, progress=False)) == 5000
    assert os.listdir(tmp_path / "tensors") and not list(tmp_path.rglob(".*"))


def test_alternating_flips_mirror_each_image_once_every_two_epochs() -> None:
    from cnnlab.data import alternating_flips

    bits = torch.rand(100, generator=torch.Generator().manual_seed(0)) < 0.5
    index = torch.randperm(100)
    epoch0, epoch1, epoch2 = (alternating_flips(index, e, bits) for e in range(3))
    assert torch.equal(epoch0, bits[index])
    assert torch.equal(epoch0 ^ epoch1, torch.ones(100, dtype=torch.bool))  # once each
    assert torch.equal(epoch0, epoch2)
    assert 30 < int(epoch0.sum()) < 70  # about half


def test_cutout_zeroes_one_square_per_image() -> None:
    from cnnlab.data import cutout

    x = torch.full((64, 3, 16, 16), 255, dtype=torch.uint8)
    out = cutout(x, 6, generator=torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == torch.uint8 and torch.equal(x, x.clone())
    zero = out == 0
    assert torch.equal(zero[:, 0], zero[:, 1]) and torch.equal(zero[:, 0], zero[:, 2])
    for mask in zero[:, 0]:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        assert 1 <= len(rows) <= 6 and 1 <= len(cols) <= 6  # cut by the border at most
        assert int(mask.sum()) == len(rows) * len(cols)  # a rectangle: the square, or its part
        assert torch.equal(rows, torch.arange(rows[0], rows[-1] + 1))  # contiguous
    inside = [int(m.sum()) for m in zero[:, 0]]
    assert 36 in inside  # a square wholly inside the image
    again = cutout(x, 6, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    assert cutout(x, 0) is x
    with pytest.raises(ValueError, match="cutout size must be >= 0"):
        cutout(x, -1)
