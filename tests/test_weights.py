"""torchvision's published weights (cnnlab.models.pretrained), with no network.

Each test points torch's hub cache (TORCH_HOME) at a temporary folder and writes there, under
the exact file name torchvision expects (the last part of the weights' URL), a random state
dict from torchvision's own builder. Oracles: torchvision's model holding that state dict
gives the same logits as ours; torchvision's `weights.transforms()` gives the same input as
our preparation; the predict command's classes and probabilities are those of torchvision's
model on torchvision's transforms. Every download is refused (an autouse fixture replaces
torch.hub's urlopen), and the tests that need a failed download make it fail in three ways.
"""

from __future__ import annotations

import email.message
import io
import json
import urllib.error
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision.transforms.functional import pil_to_tensor

import cnnlab
from cnnlab.analysis.features import deconv_top_images, load_images, load_network
from cnnlab.cli import main
from cnnlab.data import Normalize
from cnnlab.models import WeightsFileError, pretrained

RESNET18 = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
GOOGLENET = torchvision.models.GoogLeNet_Weights.IMAGENET1K_V1


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any download torch.hub tries fails at once, as with no network."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "urlopen", refuse)


def _point_hub_at(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """torch.hub.get_dir() becomes folder/hub; returns the checkpoints folder in it."""
    monkeypatch.setenv("TORCH_HOME", str(folder))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # a set_dir() elsewhere would win
    return folder / "hub" / "checkpoints"


def _random_state(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """The model's state dict, its batch norm statistics measured on a batch of noise: with
    PyTorch's default init and unit statistics the signal fades through GoogLeNet's 22 layers
    and the logits hardly depend on the input, which would make a weak oracle."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the batches seen
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 96, 96, generator=g))
    model.eval()
    return model.state_dict()


def _write_weights(home: Path, weights: torchvision.models.WeightsEnum, model: nn.Module) -> Path:
    file = home / "hub" / "checkpoints" / Path(weights.url).name
    file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(_random_state(model, seed=0), file)
    return file


@pytest.fixture(scope="module")
def resnet18_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TORCH_HOME holding a random resnet18-f37072fd.pth (written once for the module)."""
    home = tmp_path_factory.mktemp("torch_home")
    torch.manual_seed(0)
    _write_weights(home, RESNET18, torchvision.models.resnet18(weights=None))
    return home


@pytest.fixture
def with_resnet18(resnet18_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """torch's hub cache is `resnet18_home`; returns the weights file."""
    return _point_hub_at(resnet18_home, monkeypatch) / Path(RESNET18.url).name


def _torchvision_resnet18(file: Path) -> nn.Module:
    model = torchvision.models.resnet18(weights=None)
    model.load_state_dict(torch.load(file, weights_only=True))
    return model.eval()


def _photos(folder: Path, sizes: tuple[tuple[int, int], ...], fmt: str = "png") -> list[Path]:
    """Random photos of the given (width, height), written as files."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(1)
    paths = []
    for i, (w, h) in enumerate(sizes):
        pixels = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g)
        path = folder / f"photo{i}.{fmt}"
        Image.fromarray(pixels.numpy()).save(path)
        paths.append(path)
    return paths


def _assert_png(path: Path) -> None:
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert min(img.size) >= 200


# -- loading ---------------------------------------------------------------------------------


def test_weights_load_and_give_torchvisions_logits(with_resnet18: Path) -> None:
    net = cnnlab.create_model("resnet18", weights="IMAGENET1K_V1")
    reference = _torchvision_resnet18(with_resnet18)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference(x), rtol=0, atol=0)
    assert not net.training
    meta = net.pretrained
    assert meta.file == with_resnet18
    assert meta.classes == tuple(RESNET18.meta["categories"])
    assert len(meta.classes) == 1000 and meta.classes[0] == "tench"
    assert (meta.mean, meta.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert (meta.resize_size, meta.crop_size, meta.interpolation) == (256, 224, "bilinear")
    assert meta.top1_error == pytest.approx(100 - 69.758)


def test_default_and_full_names_resolve(with_resnet18: Path) -> None:
    for name in ("DEFAULT", "ResNet18_Weights.IMAGENET1K_V1", RESNET18):
        assert pretrained.info("resnet18", name).weights == "IMAGENET1K_V1"
    assert pretrained.info("resnet50", "DEFAULT").weights == "IMAGENET1K_V2"
    assert pretrained.info("resnet50", "DEFAULT").resize_size == 232
    net, meta = pretrained.load("resnet18", "DEFAULT")
    assert net.pretrained is meta and meta.torchvision_name == "ResNet18_Weights.IMAGENET1K_V1"


def test_googlenet_weights_turn_on_transform_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # torchvision loads its GoogLeNet weights with transform_input=True; so must we, to give
    # its logits on the same ImageNet-normalised input.
    _point_hub_at(tmp_path, monkeypatch)
    torch.manual_seed(0)
    reference = torchvision.models.googlenet(
        weights=None, aux_logits=True, transform_input=True, init_weights=False
    )
    file = _write_weights(tmp_path, GOOGLENET, reference)
    reference.load_state_dict(torch.load(file, weights_only=True))
    reference.eval()
    ours = cnnlab.create_model("googlenet", weights="IMAGENET1K_V1")
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=0)
        plain = cnnlab.create_model("googlenet", layout="torchvision").eval()
        plain.load_state_dict(reference.state_dict())
        assert plain.transform_input is None  # the default is unchanged
        assert (plain(x) - reference(x)).abs().max() > 0.1 * reference(x).abs().max()
    with pytest.raises(ValueError, match="layout='torchvision'"):
        cnnlab.create_model("googlenet", transform_input=True)


def test_models_with_weights_are_those_with_a_torchvision_layout() -> None:
    twins = [n for n in cnnlab.list_models() if "torchvision" in cnnlab.model_card(n).layouts]
    assert sorted(pretrained.models_with_weights()) == sorted(twins)
    for name in twins:
        assert "IMAGENET1K_V1" in pretrained.published(name)


# -- what a user can get wrong ---------------------------------------------------------------


def test_a_weights_name_torchvision_does_not_publish_lists_those_it_does() -> None:
    with pytest.raises(ValueError) as e:
        cnnlab.create_model("resnet50", weights="IMAGENET1K_V3")
    message = str(e.value)
    assert "'IMAGENET1K_V3'" in message and "resnet50" in message
    assert "IMAGENET1K_V1, IMAGENET1K_V2 or DEFAULT (= IMAGENET1K_V2)" in message


@pytest.mark.parametrize("name", ["resnet20", "zfnet", "plain18", "preact_resnet18", "vgg16_c"])
def test_a_network_without_a_torchvision_twin_has_no_weights(name: str) -> None:
    with pytest.raises(ValueError, match=f"{name} has no published weights.*alexnet, vgg11"):
        cnnlab.create_model(name, weights="IMAGENET1K_V1")


def test_options_the_weights_do_not_fit() -> None:
    with pytest.raises(ValueError, match="fit layout='torchvision', not layout='paper'"):
        cnnlab.create_model("resnet18", weights="DEFAULT", layout="paper")
    with pytest.raises(ValueError, match="1000 outputs, not num_classes=10"):
        cnnlab.create_model("resnet18", weights="DEFAULT", num_classes=10)
    with pytest.raises(cnnlab.models.UnknownModelError, match="resnet18"):
        cnnlab.create_model("resnet81", weights="DEFAULT")


class _Response:
    """What urlopen returns, serving `body`; with `cut` > 0 the connection drops after that
    many bytes."""

    def __init__(self, body: bytes, cut: int = 0) -> None:
        self.stream = io.BytesIO(body)
        self.cut = cut
        self.headers = email.message.Message()
        self.headers["Content-Length"] = str(len(body))

    def __enter__(self) -> _Response:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def info(self) -> email.message.Message:
        return self.headers

    def read(self, n: int) -> bytes:
        if self.cut and self.stream.tell() >= self.cut:
            raise ConnectionResetError("connection reset by peer")
        return self.stream.read(n)


def _refused(*args: object, **kwargs: object) -> None:
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


@pytest.mark.parametrize(
    ("how", "urlopen", "reason"),
    [
        ("no network", _refused, "name resolution"),
        ("cut off", lambda *a, **k: _Response(b"\0" * 3 * 2**20, cut=2**20), "reset by peer"),
        ("wrong bytes", lambda *a, **k: _Response(b"not the weights"), "invalid hash value"),
    ],
)
def test_a_failed_download_names_the_file_and_folder_and_leaves_nothing(
    how: str,
    urlopen: Callable[..., object],
    reason: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = _point_hub_at(tmp_path, monkeypatch)
    monkeypatch.setattr(torch.hub, "urlopen", urlopen)
    with pytest.raises(WeightsFileError) as e:
        cnnlab.create_model("resnet18", weights="IMAGENET1K_V1", progress=False)
    message = str(e.value)
    assert "\n" not in message
    assert f"copy resnet18-f37072fd.pth into {folder}," in message
    assert reason in message
    assert list(folder.iterdir()) == []  # torch.hub's temporary file is gone too


def test_cli_without_network_says_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    folder = _point_hub_at(tmp_path / "home", monkeypatch)
    (photo,) = _photos(tmp_path, ((40, 30),))
    assert main(["predict", "resnet18", "--weights", "DEFAULT", str(photo)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("cnnlab: error: cannot download")
    assert f"copy resnet18-f37072fd.pth into {folder}," in err


def test_an_unreadable_or_unfitting_file_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _point_hub_at(tmp_path, monkeypatch)
    folder.mkdir(parents=True)
    file = folder / "resnet18-f37072fd.pth"
    file.write_bytes(b"half a file")
    with pytest.raises(WeightsFileError, match="cannot read .*resnet18-f37072fd.pth.*delete it"):
        cnnlab.create_model("resnet18", weights="DEFAULT")
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, file)  # another network's file
    with pytest.raises(WeightsFileError, match="does not fit resnet18 .*Missing key.*bn1"):
        cnnlab.create_model("resnet18", weights="DEFAULT")


# -- images in, classes out ------------------------------------------------------------------


def test_prepare_is_torchvisions_transforms(with_resnet18: Path) -> None:
    meta = pretrained.info("resnet18", "IMAGENET1K_V1")
    image = torch.randint(0, 256, (3, 300, 200), dtype=torch.uint8)
    pixels = meta.prepare(image)
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 224, 224)
    ours = Normalize(torch.tensor(meta.mean), torch.tensor(meta.std))(pixels[None])[0]
    torch.testing.assert_close(ours, RESNET18.transforms()(image), rtol=0, atol=1e-5)


def test_cli_predict_names_imagenet_classes(
    with_resnet18: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    photos = _photos(tmp_path, ((90, 60), (50, 80)))
    argv = ["predict", "resnet18", "--weights", "IMAGENET1K_V1", "--top", "3", "--device", "cpu"]
    assert main(argv + [str(p) for p in photos]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    # The oracle: torchvision's model on torchvision's transforms of the same file.
    reference = _torchvision_resnet18(with_resnet18)
    categories = RESNET18.meta["categories"]
    for line, photo in zip(lines, photos, strict=True):
        with Image.open(photo) as img:
            x = RESNET18.transforms()(pil_to_tensor(img.convert("RGB")))
        with torch.no_grad():
            p, i = reference(x[None]).softmax(dim=1)[0].topk(3)
        expected = ", ".join(f"{categories[j]} {100 * q:.1f}%" for j, q in zip(i, p, strict=True))
        assert line == f"{photo}: {expected}"


def test_predict_with_weights_needs_a_model_name(
    with_resnet18: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (photo,) = _photos(tmp_path, ((40, 30),))
    assert main(["predict", str(tmp_path), "--weights", "DEFAULT", str(photo)]) == 2
    assert "go with a model name" in capsys.readouterr().err


def test_network_for_figures_prepares_as_the_weights_do(with_resnet18: Path) -> None:
    net = load_network("resnet18", "IMAGENET1K_V1")
    assert net.image_size == (224, 224) and net.classes[0] == "tench"
    assert net.source == "torchvision weights IMAGENET1K_V1"
    assert torch.equal(net.model.conv1.weight, torch.load(with_resnet18)["conv1.weight"])
    image = torch.randint(0, 256, (1, 3, 100, 150), dtype=torch.uint8)
    assert torch.equal(net.prepare(image), net.pretrained.prepare(image))


def test_deconv_on_photos_of_mixed_sizes(with_resnet18: Path, tmp_path: Path) -> None:
    photos, names = load_images(_photos(tmp_path / "photos", ((120, 90), (80, 140), (224, 224))))
    assert [tuple(p.shape) for p in photos] == [(3, 90, 120), (3, 140, 80), (3, 224, 224)]
    net = load_network("resnet18", "DEFAULT")
    pixels = torch.stack([net.prepare(p[None])[0] for p in photos])
    results = deconv_top_images(
        net, pixels, torch.arange(3), names, "conv1", [0], top=2, prepared=True
    )
    for unit in results[0].units:
        # Prepared once: a 224 x 224 photo is resized to 256 and cropped, not taken as it is.
        assert torch.equal(unit.image, pixels[unit.index])
        assert unit.label == names[unit.index]
    assert not torch.equal(pixels[2], photos[2])


def test_cli_visualize_with_weights_on_your_photos(
    with_resnet18: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "photos"
    extra, *_ = _photos(tmp_path, ((70, 50),), fmt="jpg")
    _photos(folder, ((120, 90), (80, 140)))
    filters, activations, deconv = (tmp_path / f"{n}.png" for n in ("f", "a", "d"))
    w = ["--weights", "DEFAULT"]
    assert main(["visualize", "filters", "resnet18", *w, "--out", str(filters)]) == 0
    argv = ["visualize", "activations", "resnet18", str(extra), *w, "--out", str(activations)]
    assert main(argv) == 0
    argv = ["visualize", "deconv", "resnet18", *w, "--layer", "layer1", "--images", str(folder),
            str(extra), "--channels", "3", "--top", "2", "--out", str(deconv)]  # fmt: skip
    assert main(argv) == 0
    assert capsys.readouterr().out.count("wrote") == 3
    for path in (filters, activations, deconv):
        _assert_png(path)


def test_cli_deconv_images_errors(
    with_resnet18: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    base = ["visualize", "deconv", "resnet18", "--weights", "DEFAULT", "--layer", "conv1"]
    (tmp_path / "empty").mkdir()
    assert main([*base, "--images", str(tmp_path / "empty")]) == 2
    assert "no image files in this folder" in capsys.readouterr().err
    assert main([*base, "--images", str(tmp_path / "missing.jpg")]) == 2
    assert "no image file or folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: --data and --images exclude each other
        main([*base, "--images", "a.jpg", "--data", "cifar10"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_eval_with_weights_on_a_folder_named_by_classes(
    with_resnet18: Path, tmp_path: Path
) -> None:
    from cnnlab.train.evaluate import input_normalize
    from cnnlab.train.runs import class_index, evaluate_from_spec

    root = tmp_path / "data"
    for name in ("goldfish", "tench"):  # two of ImageNet's classes, by torchvision's names
        _photos(root / "val" / name, ((300, 260), (240, 320)))
    r = evaluate_from_spec("resnet18", root, split="val", weights="IMAGENET1K_V1",
                           device="cpu", precision="fp32", workers=0)  # fmt: skip
    # the oracle: torchvision's own model on the weights' own transforms, image by image
    tv = _torchvision_resnet18(with_resnet18)
    meta = pretrained.info("resnet18", "IMAGENET1K_V1")
    normalize = input_normalize(meta.mean, meta.std, torch.device("cpu"))
    wrong = 0
    for label, name in ((1, "goldfish"), (0, "tench")):
        for path in sorted((root / "val" / name).iterdir()):
            x = normalize(meta.prepare(pil_to_tensor(Image.open(path).convert("RGB")))[None])
            wrong += int(tv(x).argmax()) != label
    assert r.images == 4 and r.top1_error == pytest.approx(100 * wrong / 4)
    assert "center" in r.method
    assert class_index(["b", "a"], ["a", "b", "c"]) == [1, 0]
    assert class_index(["n1", "n2", "n3"], ["a", "b", "c"]) == [0, 1, 2]
    with pytest.raises(ValueError, match="'cats' is not one of the weights' 3 classes"):
        class_index(["cats"], ["a", "b", "c"])


def test_export_with_weights_carries_their_classes_and_normalisation(
    with_resnet18: Path, tmp_path: Path
) -> None:
    from cnnlab.export import export

    out = tmp_path / "r18.pt"
    result = export("resnet18", out, format="torchscript", weights="IMAGENET1K_V1")
    sidecar = json.loads(Path(f"{out}.json").read_text())
    assert out.exists() and result.max_abs_diff <= result.tolerance
    assert len(sidecar["classes"]) == 1000 and sidecar["classes"][0] == "tench"
    assert "0.485" in json.dumps(sidecar)  # ImageNet's mean, from the weights
