"""`cnnlab visualize`: the figures exist and are PNGs, and the deconvnet is Zeiler and Fergus's.

Oracles: a hand-written deconvnet (unpooling with switches, rectification, transposed filters,
ZF section 2.1) on a small net must give the same projection as the swapped-ReLU backward
pass; a known filter and a single bright patch put the projection where it must be; the
measured receptive fields agree with `cnnlab.profile`'s.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from matplotlib.colors import to_hex
from PIL import Image
from torch import nn

import cnnlab
from cnnlab.analysis.features import (
    DeconvReLU,
    Network,
    deconv_top_images,
    deconvnet,
    default_stages,
    load_network,
    project,
    receptive_field_boxes,
    stage_outputs,
)
from cnnlab.analysis.plots import RunCurves, curves_figure, read_run
from cnnlab.cli import main


def _assert_png(path: Path) -> None:
    assert path.is_file()
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.verify()
    with Image.open(path) as img:
        w, h = img.size
    assert 200 <= w <= 6000 and 200 <= h <= 8000, (w, h)


def _small_net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 5, padding=2),  # 0: 16 x 16
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2),  # 2: 7 x 7, overlapping windows as in ZF and AlexNet
        nn.Conv2d(4, 6, 3, padding=1),  # 3: 7 x 7
        nn.ReLU(inplace=True),
    )
    return net.eval()


def _by_hand(net: nn.Sequential, x: torch.Tensor, channel: int) -> torch.Tensor:
    """ZF's deconvnet written out for `_small_net`, from the top unit of `channel` after 4."""
    conv1, conv2 = net[0], net[3]
    a1 = F.relu(conv1(x))
    p1, switches = F.max_pool2d(a1, 3, 2, return_indices=True)
    a2 = F.relu(conv2(p1))
    n, _, _, w = a2.shape
    flat = a2[:, channel].flatten(1).argmax(dim=1)
    seed = torch.zeros_like(a2)
    i = torch.arange(n)
    seed[i, channel, flat // w, flat % w] = a2[i, channel, flat // w, flat % w]
    r = F.relu(seed)  # rectify
    r = F.conv_transpose2d(r, conv2.weight, padding=1)  # the same filters, transposed
    # unpool: each value back to its switch; overlapping windows add up
    up = torch.zeros(a1.flatten(2).shape).scatter_add_(2, switches.flatten(2), r.flatten(2))
    r = F.relu(up.view_as(a1))
    return F.conv_transpose2d(r, conv1.weight, padding=2)


def test_projection_is_the_hand_written_deconvnet() -> None:
    net = _small_net()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        expected = _by_hand(net, x, channel=2)
    got, values, _ = project(net, x, "4", channel=2)
    assert (values > 0).all()
    assert expected.abs().sum() > 0
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_projection_of_a_bright_patch_lands_on_it() -> None:
    net = nn.Sequential(nn.Conv2d(3, 1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2)).eval()
    with torch.no_grad():
        net[0].weight.fill_(0.25)
        net[0].weight[:, :, 1, 1] = 1.0  # a centre-weighted blob detector
        net[0].bias.zero_()
    x = torch.zeros(1, 3, 24, 24)
    x[:, :, 10:12, 14:16] = 1.0  # the bright patch: rows 10-11, columns 14-15
    proj, _, positions = project(net, x, "2", channel=0)
    assert positions.tolist() == [[5, 7]]  # the pooling window over the patch
    (box,) = receptive_field_boxes(net, "2", (24, 24), positions)
    # pool rows 10-11 <- conv rows 10-11 <- input rows 9-12 (3x3 windows); same for columns
    assert box == (9, 13, 13, 17)
    energy = proj[0].abs().sum(dim=0)
    top, left, bottom, right = box
    outside = energy.clone()
    outside[top:bottom, left:right] = 0
    assert energy.sum() > 0 and outside.sum() == 0
    peak = divmod(int(energy.argmax()), 24)
    assert 10 <= peak[0] < 12 and 14 <= peak[1] < 16


@pytest.mark.parametrize(
    ("name", "layer"),
    [("zfnet", "conv5"), ("alexnet", "conv3"), ("resnet20", "layer2"), ("resnet18", "layer2")],
)
def test_deconv_projections_lie_in_their_receptive_fields(name: str, layer: str) -> None:
    net = load_network(name)
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=_gen())
    labels = torch.tensor([0, 1, 0])
    (res,) = deconv_top_images(
        net, images, labels, ("cat", "dog"), layer, top=2, strongest=1, batch_size=3
    )
    assert len(res.units) == 2
    h, w = net.image_size
    for u in res.units:
        assert u.label in ("cat", "dog")
        assert u.image.shape == (3, h, w) and u.image.dtype == torch.uint8
        top, left, bottom, right = u.box
        assert 0 <= top < bottom <= h and 0 <= left < right <= w
        energy = u.projection.abs().sum(dim=0)
        assert energy.sum() > 0
        energy[top:bottom, left:right] = 0
        assert energy.sum() == 0, "projection outside the receptive field"


def test_receptive_fields_agree_with_profile() -> None:
    net = load_network("zfnet")
    rows = {r.name: r for r in cnnlab.profile("zfnet").rows}
    rf, stride = rows["features.12"].receptive_field, rows["features.12"].stride
    positions = torch.tensor([[4, 5], [5, 6], [6, 7]])  # inside the 13 x 13 map, unclipped
    boxes = receptive_field_boxes(net.model, "features.12", (224, 224), positions)
    for top, left, bottom, right in boxes:
        assert bottom - top == rf and right - left == rf
    assert boxes[1][0] - boxes[0][0] == stride and boxes[2][1] - boxes[1][1] == stride


def test_relu_swap_is_undone() -> None:
    net = cnnlab.create_model("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    before = {p: m for p, m in net.named_modules(remove_duplicate=False)}
    with torch.no_grad():
        expected = net(x)
    with deconvnet(net):
        relus = [m for m in net.modules() if isinstance(m, DeconvReLU)]
        assert relus and not any(isinstance(m, nn.ReLU) for m in net.modules())
        with torch.no_grad():
            torch.testing.assert_close(net(x), expected)  # same forward values
    project(net, x, "layer2", channel=3)
    with pytest.raises(RuntimeError), deconvnet(net):
        raise RuntimeError("interrupted")
    after = {p: m for p, m in net.named_modules(remove_duplicate=False)}
    assert after.keys() == before.keys()
    assert all(after[p] is m for p, m in before.items())
    assert not net.training
    with torch.no_grad():
        assert torch.equal(net(x), expected)


def test_functional_relu_is_refused() -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 2, 3)
            self.conv2 = nn.Conv2d(2, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv2(F.relu(self.conv1(x))).sum((2, 3))

    with pytest.raises(ValueError, match="as a function"):
        project(Functional(), torch.randn(1, 3, 8, 8), "conv2", channel=0)


def test_stages() -> None:
    assert default_stages(cnnlab.create_model("resnet20")) == ["layer1", "layer2", "layer3"]
    assert default_stages(cnnlab.create_model("zfnet")) == ["features.2", "features.6",
                                                             "features.14"]  # fmt: skip
    net = cnnlab.create_model("resnet20")
    out = stage_outputs(net, torch.randn(1, 3, 32, 32))
    assert [tuple(t.shape) for t in out.values()] == [(1, 16, 32, 32), (1, 32, 16, 16),
                                                     (1, 64, 8, 8)]  # fmt: skip
    # A layer followed by an in-place ReLU: its output as it was, negatives and all.
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True))
    x = torch.randn(2, 3, 8, 8)
    out = stage_outputs(net, x, ["0"])["0"]
    assert (out < 0).any()
    torch.testing.assert_close(out, net[0](x).detach())


# -- the command line ------------------------------------------------------------------------


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.fixture
def image_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny root/test/<class>/<image> tree, with the dataset cache kept in tmp_path."""
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "tiny"
    g = _gen()
    for name in ("cat", "dog", "ship"):
        (root / "test" / name).mkdir(parents=True)
        for i in range(4):
            pixels = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=g)
            Image.fromarray(pixels.numpy()).save(root / "test" / name / f"{i}.png")
    return root


def test_cli_filters_and_activations(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image = tmp_path / "photo.jpg"
    Image.new("RGB", (48, 40), (200, 30, 60)).save(image)
    assert main(["visualize", "filters", "resnet20", "--out", str(tmp_path / "f.png")]) == 0
    out = tmp_path / "a.png"
    assert main(["visualize", "activations", "resnet20", str(image), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    _assert_png(tmp_path / "f.png")
    _assert_png(out)


def test_cli_as_a_subprocess(tmp_path: Path) -> None:
    out = tmp_path / "filters.png"
    done = subprocess.run(
        [sys.executable, "-m", "cnnlab", "visualize", "filters", "zfnet", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}" in done.stdout
    _assert_png(out)


def test_cli_deconv(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "deconv.png"
    argv = ["visualize", "deconv", "resnet20", "--layer", "layer1", "--data", str(image_folder),
            "--channels", "0", "5", "--limit", "8", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    _assert_png(out)


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["visualize", "filters", str(tmp_path / "nothing.pt")]) == 2
    assert "not a registered model name" in capsys.readouterr().err
    assert main(["visualize", "curves", str(tmp_path)]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


def test_checkpoint_is_loaded(tmp_path: Path) -> None:
    from cnnlab.train.checkpoint import save_checkpoint

    model = cnnlab.create_model("resnet20", num_classes=3)
    state = {
        "model": "resnet20", "model_options": {}, "num_classes": 3,
        "classes": ["cat", "dog", "ship"], "image_shape": [3, 32, 32],
        "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
        "model_state": model.state_dict(), "step": 7,
    }  # fmt: skip
    save_checkpoint(tmp_path / "checkpoint.pt", state)
    net = load_network(tmp_path)
    assert isinstance(net, Network) and net.classes == ("cat", "dog", "ship")
    assert net.image_size == (32, 32)
    x = net.normalize(torch.full((1, 3, 32, 32), 255, dtype=torch.uint8))
    torch.testing.assert_close(x, torch.full((1, 3, 32, 32), 2.0))
    assert torch.equal(net.model.conv1.weight, model.conv1.weight)


def _write_run(folder: Path, rows: list[dict[str, object]], tail: str = "") -> Path:
    folder.mkdir(parents=True)
    text = "".join(json.dumps(r) + "\n" for r in rows) + tail
    (folder / "metrics.jsonl").write_text(text)
    return folder


def test_cli_curves(tmp_path: Path) -> None:
    steps = range(0, 1001, 100)
    plain = _write_run(
        tmp_path / "plain20",
        [
            {
                "step": s,
                "train_error": 60 - s / 50,
                "test_error": 65 - s / 50 if s % 500 == 0 else None,
            }
            for s in steps
        ],  # fmt: skip
        tail='{"step": 1100, "train_er',  # an interrupted run's last line
    )
    resnet = _write_run(
        tmp_path / "resnet20",
        [{"step": s, "train_error": 50 - s / 40, "val_error": 55 - s / 40} for s in steps],
    )
    with pytest.warns(UserWarning, match="not a JSON line"):
        runs = [read_run(plain), read_run(resnet)]
    assert runs[0].name == "plain20" and runs[0].test_steps == (0, 500, 1000)
    assert runs[1].test_split == "val" and len(runs[1].train_steps) == 11
    fig = curves_figure(runs)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels[:2] == ["plain20", "resnet20 (val)"]
    assert fig.axes[0].get_xlabel() == "iterations" and "error" in fig.axes[0].get_ylabel()
    out = tmp_path / "curves.png"
    with pytest.warns(UserWarning):
        assert main(["visualize", "curves", str(plain), str(resnet), "--out", str(out)]) == 0
    _assert_png(out)


@pytest.mark.parametrize("n", [3, 12])
def test_every_run_in_a_figure_has_its_own_colour(n: int) -> None:
    # Matplotlib's ten default colours come round again at the eleventh line: the
    # time-to-accuracy page has twelve runs, and two of them would share a colour.
    runs = [RunCurves(f"run{i}", (0, 1), (50.0, 40.0), (1,), (45.0,), "test") for i in range(n)]
    legend = curves_figure(runs).axes[0].get_legend()
    colours = [to_hex(h.get_color()) for h in legend.legend_handles[:n]]
    assert len(set(colours)) == n
