"""Streamed image folders (issue 9): index, decoding, the papers' crops, the loop on streams."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.data import DataError
from cnnlab.data.augment import CenterCrop, TrainCrop, pca_colour
from cnnlab.data.stream import ImageStream, StreamDataset, choose_mode, loader
from cnnlab.data.views import resize_shorter
from cnnlab.train import get_recipe, train
from cnnlab.train.batches import _StepSampler
from cnnlab.train.recipes import RECIPES
from cnnlab.train.runs import train_from_spec
from cnnlab.train.schedules import Plateau, learning_rate

CLASSES = ("cat", "dog", "fox")


def make_folder(root: Path, per_class: int = 6, val: int = 2, seed: int = 0) -> Path:
    """root/{train,val}/<class>/ of random images of mixed sizes, formats and modes."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", val)):
        for c in CLASSES:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
                im = Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8"))
                if i % 4 == 3:
                    im = im.convert("L")  # grey images become RGB
                im.save(d / f"{i}.{('jpg', 'png', 'bmp')[i % 3]}")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("stream") / "data")


def test_stream_indexes_and_decodes_every_format(folder: Path) -> None:
    s = ImageStream.open(folder, "train")
    assert len(s) == 18 and s.classes == CLASSES
    assert s.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    for i in range(len(s)):
        img = s.read(i)
        w, h = Image.open(s.names[i]).size
        assert img.dtype == torch.uint8 and img.shape == (3, h, w)
        assert s.image_size(i) == (w, h)
    # the decoded pixels are Pillow's (PNG is lossless)
    png = next(i for i, n in enumerate(s.names) if n.endswith(".png"))
    expected = np.asarray(Image.open(s.names[png]).convert("RGB"))
    assert torch.equal(s.read(png).permute(1, 2, 0), torch.from_numpy(expected.copy()))


def test_uncompressed_tar_is_read_in_place(folder: Path, tmp_path: Path) -> None:
    archive = tmp_path / "data.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(folder, arcname="data")
    a, b = ImageStream.open(folder, "val"), ImageStream.open(archive, "val")
    assert len(a) == len(b) == 6 and a.classes == b.classes
    assert all(torch.equal(a.read(i), b.read(i)) for i in range(len(a)))
    gz = tmp_path / "data.tar.gz"
    with tarfile.open(gz, "w:gz") as tar:
        tar.add(folder, arcname="data")
    with pytest.raises(DataError, match="compressed archive cannot be read image by image"):
        ImageStream.open(gz, "train")


def test_bad_folders_are_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="no class folders"):
        ImageStream.open(tmp_path / "empty", "train")
    bad = make_folder(tmp_path / "bad", per_class=2, val=1)
    (bad / "train" / "cat" / "0.jpg").write_bytes(b"not an image")
    s = ImageStream.open(bad, "train")
    with pytest.raises(DataError, match=r"cannot read image .*0\.jpg.*--skip-corrupt"):
        s.read(0)
    with pytest.warns(UserWarning, match="skipped unreadable image"):
        img = ImageStream.open(bad, "train", skip_corrupt=True).read(0)
    assert img.shape[0] == 3


def test_choose_mode_by_size(folder: Path, tmp_path: Path) -> None:
    assert choose_mode(folder) == "stream"  # mixed sizes
    small = tmp_path / "small"
    for c in CLASSES:
        (small / "train" / c).mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(small / "train" / c / "0.png")
    assert choose_mode(small) == "memory"
    assert choose_mode("cifar10") == "memory"


def test_train_crops_have_the_papers_shapes_and_are_seeded() -> None:
    img = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8)
    for mode, scale in (("square", (256, 256)), ("scale", (256, 480)), ("area", (256, 256))):
        crop = TrainCrop(224, mode, scale=scale)
        a = crop(img, torch.Generator().manual_seed(1))
        assert a.shape == (3, 224, 224) and a.dtype == torch.uint8
        assert torch.equal(a, crop(img, torch.Generator().manual_seed(1)))
        assert not torch.equal(a, crop(img, torch.Generator().manual_seed(2)))
    # "square": every crop lies inside the central 256 x 256 of the 256-resized image
    marked = torch.zeros(3, 256, 512, dtype=torch.uint8)
    marked[:, :, :128] = 255  # the left quarter is outside the central square
    crop = TrainCrop(224, "square", flip=False)
    for s in range(20):
        assert crop(marked, torch.Generator().manual_seed(s)).max() == 0
    with pytest.raises(ValueError, match="shorter side's range"):
        TrainCrop(224, "scale", scale=(200, 300))


def test_lighting_shifts_each_image_along_the_colour_pca() -> None:
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    eigval, eigvec = pca_colour(images)
    cov = torch.cov(images.permute(1, 0, 2, 3).reshape(3, -1).double() / 255)
    assert torch.allclose(eigvec @ torch.diag(eigval) @ eigvec.T, cov.float(), atol=1e-5)
    grey = torch.full((3, 40, 40), 128, dtype=torch.uint8)
    pca = {"eigval": tuple(eigval.tolist()), "eigvec": tuple(map(tuple, eigvec.tolist()))}
    crop = TrainCrop(32, "scale", scale=(40, 40), flip=False, lighting=0.1, **pca)
    out = crop(grey, torch.Generator().manual_seed(0)).float()
    shift = out.mean((1, 2)) - 128
    assert (out == out[:, :1, :1]).all()  # one shift per image and channel
    g = torch.Generator().manual_seed(0)
    for _ in range(3):  # the generator's draws before lighting: S, then the crop's offsets
        torch.randint(0, 1, (1,), generator=g)
    alpha = torch.randn(3, generator=g) * 0.1
    expected = 255 * (eigvec @ (alpha * eigval))
    assert torch.allclose(shift, expected.round(), atol=1)


def test_center_crop_and_resize_shorter() -> None:
    img = torch.zeros(3, 100, 200, dtype=torch.uint8)
    assert resize_shorter(img, 50).shape == (3, 50, 100)
    assert CenterCrop(64, 56)(img).shape == (3, 56, 56)
    with pytest.raises(ValueError, match="needs a resize of at least"):
        CenterCrop(200, 224)


def test_step_sampler_shares_a_global_batch_between_processes() -> None:
    whole = list(_StepSampler(20, 4, 0, 4, seed=3, start=0, stop=10))
    halves = [list(_StepSampler(20, 4, r, 2, seed=3, start=0, stop=10)) for r in (0, 1)]
    for step in range(10):
        assert whole[step] == halves[0][step] + halves[1][step]
    assert list(_StepSampler(20, 4, 0, 4, seed=3, start=7, stop=10)) == whole[7:]
    epoch = [i for batch in whole[:5] for i, _ in batch]
    assert sorted(epoch) == list(range(20))  # an epoch sees every image once


def test_plateau_divides_after_patience_and_at_most_plateau_max_times() -> None:
    recipe = get_recipe("resnet2015").replace(plateau_patience=2, plateau_max=2)
    p = Plateau()
    history = [50, 40, 41, 40.5, 39, 39, 39, 39, 39, 39]
    divided = [p.update(e, recipe) for e in history]
    assert divided == [False, False, False, True, False, False, True, False, False, False]
    assert learning_rate(recipe, 10**5, plateau=p) == pytest.approx(0.1 * 0.01)
    q = Plateau()
    q.load_state_dict(p.state_dict())
    assert q == p


def test_imagenet_recipes_cite_their_papers() -> None:
    for name in ("alexnet2012", "vgg2014", "googlenet2014", "resnet2015"):
        r = RECIPES[name]
        assert r.crop != "pad" and "20" in r.source
    assert RECIPES["resnet2015"].scale_range == (256, 480)
    assert RECIPES["vgg2014"].scale_range == (256, 512)
    assert RECIPES["alexnet2012"].lighting == 0.1


def _small(recipe: str, **changes: object):
    # resnet20 takes 32 x 32: the papers' crops scaled down so that a step is fast
    return get_recipe(recipe).replace(batch_size=6, scale_range=(36, 48), test_resize=36, **changes)


@pytest.mark.parametrize("recipe", ["alexnet2012", "vgg2014", "googlenet2014", "resnet2015"])
def test_each_imagenet_recipe_trains_on_a_streamed_folder(
    folder: Path, tmp_path: Path, recipe: str
) -> None:
    s, v = ImageStream.open(folder, "train"), ImageStream.open(folder, "val")
    r = _small(recipe, steps=3)
    result = train("resnet20", s, r, out=tmp_path / "run", val_data=v, workers=0, progress=False)
    assert result.completed and result.best_val_error is not None
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["image_shape"] == [3, 32, 32] and config["data_mode"]["mode"] == "stream"
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["preprocess"] == {"resize": 36, "crop": 32}


def test_stream_resume_is_bitwise_and_workers_do_not_change_batches(
    folder: Path, tmp_path: Path
) -> None:
    s, v = ImageStream.open(folder, "train"), ImageStream.open(folder, "val")
    r = _small("resnet2015", steps=6, schedule="linear")
    a = train("resnet20", s, r, out=tmp_path / "a", val_data=v, workers=0, progress=False)
    train("resnet20", s, r, out=tmp_path / "b", val_data=v, workers=2, progress=False,
          stop_after=4)  # fmt: skip
    b = train("resnet20", s, r, out=tmp_path / "b", val_data=v, workers=2, progress=False,
              resume=True)  # fmt: skip
    for (k, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(x, y), k


class _Parent:
    """A transform that gives, in place of the image, the pid of the process that made this one."""

    def __call__(self, img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return torch.tensor([os.getppid()])


def test_loader_workers_are_not_forked_from_the_training_process(folder: Path) -> None:
    # A fork of this process inherits any lock another thread holds at that instant: a worker
    # of a gloo process hung so (stream.loader). The workers come from the forkserver.
    data = StreamDataset(ImageStream.open(folder, "train"), _Parent())
    for workers in (1, 2):
        batches = loader(data, workers, batch_sampler=[[(0, 0), (1, 0)], [(2, 0), (3, 0)]])
        parents = torch.cat([x.flatten() for x, _ in batches]).unique().tolist()
        assert len(parents) == 1 and parents[0] not in (os.getpid(), os.getppid())
    x, _ = next(iter(loader(data, 0, batch_sampler=[[(0, 0)]])))  # no workers: read here
    assert x.item() == os.getppid()


def test_googlenet_trains_at_224_with_its_auxiliary_classifiers(
    folder: Path, tmp_path: Path
) -> None:
    s, v = ImageStream.open(folder, "train"), ImageStream.open(folder, "val")
    r = get_recipe("googlenet2014").replace(batch_size=2, steps=1)
    result = train("googlenet", s, r, out=tmp_path / "g", val_data=v, workers=0, progress=False)
    assert result.completed
    assert json.loads((tmp_path / "g" / "config.json").read_text())["image_shape"] == [3, 224, 224]


def test_recipe_and_data_path_mismatch_is_one_clear_error(folder: Path, tmp_path: Path) -> None:
    s = ImageStream.open(folder, "train")
    with pytest.raises(ValueError, match="streamed image folders need one of the ImageNet"):
        fast = get_recipe("fast").replace(steps=1, batch_size=6)
        train("resnet20", s, fast, workers=0, progress=False)
    with pytest.raises(ValueError, match="needs validation images"):
        train("resnet20", s, _small("resnet2015", steps=1), workers=0, progress=False)
    with pytest.raises(ValueError, match="clean_final=0.1 is for in-memory images"):
        clean = _small("resnet2015", steps=1).replace(clean_final=0.1)
        train("resnet20", s, clean, val_data=ImageStream.open(folder, "val"), workers=0,
              progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="--split 45k is CIFAR's"):
        train_from_spec("resnet20", folder, tmp_path / "x", recipe="resnet2015", split="45k",
                        data_mode="stream")  # fmt: skip


def test_train_cli_streams_a_folder(folder: Path, tmp_path: Path, capsys) -> None:
    from cnnlab.cli import main

    small = ["-R", "batch_size=6", "-R", "scale_range=36,40", "-R", "test_resize=36"]
    out = str(tmp_path / "c")
    rc = main(["train", "resnet20", "--data", str(folder), "--out", out, "--recipe",
               "resnet2015", "--steps", "2", "--workers", "0", "-q", *small])  # fmt: skip
    assert rc == 0
    assert (tmp_path / "c" / "checkpoint.pt").exists()


@pytest.fixture(scope="module")
def streamed_run(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("streamed") / "run"
    s, v = ImageStream.open(folder, "train"), ImageStream.open(folder, "val")
    train("resnet20", s, _small("resnet2015", steps=2), out=out, val_data=v, workers=0,
          progress=False)  # fmt: skip
    return out


def test_eval_of_a_streamed_run_with_each_test_time_method(
    folder: Path, streamed_run: Path
) -> None:
    from cnnlab.train import evaluate_from_spec

    how = {"split": "val", "device": "cpu", "precision": "fp32", "workers": 0}
    plain = evaluate_from_spec(streamed_run, folder, **how)
    center = evaluate_from_spec(streamed_run, folder, test_time="center", **how)
    assert plain.images == center.images == 6
    assert center.top1_error == pytest.approx(plain.top1_error)  # the same 36 -> 32 centre crop
    ten = evaluate_from_spec(streamed_run, folder, test_time="10crop", **how)
    dense = evaluate_from_spec(streamed_run, folder, test_time="dense", scales="32,48", **how)
    assert ten.views_per_image == 10 and dense.views_per_image == 4
    assert "Krizhevsky" in ten.method and "dense" in dense.method
    with pytest.raises(ValueError, match="give one"):
        evaluate_from_spec(streamed_run, folder, test_time="10crop", tta="flip", **how)
    with pytest.raises(ValueError, match="--scales applies to --test-time dense"):
        evaluate_from_spec(streamed_run, folder, scales="32", **how)


def test_eval_cli_prints_the_method(folder: Path, streamed_run: Path, capsys) -> None:
    from cnnlab.cli import main

    args = ["eval", str(streamed_run), "--data", str(folder), "--split", "val", "--workers", "0"]
    assert main([*args, "--test-time", "10crop"]) == 0
    out = capsys.readouterr().out
    assert "top-1 error" in out and "test-time method 10crop" in out
    assert main([*args, "--test-time", "dense", "--scales", "32,x"]) == 2
    assert "scale" in capsys.readouterr().err


def test_predict_gives_a_streamed_network_its_evaluation_crop(
    streamed_run: Path, tmp_path: Path
) -> None:
    from cnnlab.train import predict
    from cnnlab.train.evaluate import input_normalize, load_model

    photo = tmp_path / "photo.png"
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (70, 50, 3), dtype=torch.uint8, generator=g)
    Image.fromarray(pixels.numpy()).save(photo)
    (p,) = predict(streamed_run, [photo], top=3, device="cpu")
    net, state = load_model(streamed_run, "cpu")
    normalize = input_normalize(state["mean"], state["std"], torch.device("cpu"))
    x = normalize(CenterCrop(36, 32)(pixels.permute(2, 0, 1))[None])  # the run's resize, crop
    probs = net(x).softmax(1)[0].detach()
    assert p.probabilities[0] == pytest.approx(float(probs.max()), rel=1e-5)
    assert p.classes[0] == CLASSES[int(probs.argmax())]


def test_eval_at_another_crop_size(folder: Path, streamed_run: Path) -> None:
    # the pre-activation paper's larger single crop (He et al. 2016, Table 5), scaled down
    from cnnlab.train import evaluate_from_spec

    how = {"split": "val", "device": "cpu", "precision": "fp32", "workers": 0}
    r = evaluate_from_spec(streamed_run, folder, crop=40, **how)
    assert r.images == 6 and "one 40x40 centre crop at shorter side 45" in r.method
    with pytest.raises(ValueError, match="crop 50 is larger than resize 40"):
        evaluate_from_spec(streamed_run, folder, crop=50, resize=40, **how)
    with pytest.raises(ValueError, match="not --resize or --crop"):
        evaluate_from_spec(streamed_run, folder, test_time="dense", crop=40, **how)
