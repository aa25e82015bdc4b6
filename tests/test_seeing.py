"""Seeing through networks without max pooling, and layer responses (issue 10).

Projections: the deconvnet, guided backpropagation and the plain gradient must be the
hand-written rules of Springenberg et al. 2015 (section 3.4, Fig. 1) on a small net; the
gradient must be autograd's (oracle); on a network without max pooling the deconvnet's
projections of one unit are the same picture for any image (the fault the issue describes)
while guided backpropagation's follow a bright patch inside the unit's receptive field.

Layer responses (He et al. 2015, Fig. 7): the layers are the batch norms after 3x3 convs, and
the std is the channel mean of per-channel stds, computed here by hand on one batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import cnnlab
from cnnlab.analysis.features import (
    METHODS,
    GuidedReLU,
    Network,
    backward_rule,
    deconv_top_images,
    load_network,
    project,
    receptive_field_boxes,
    stage_outputs,
)
from cnnlab.analysis.plots import plot_deconv, plot_responses
from cnnlab.analysis.responses import (
    LayerResponses,
    mean_responses,
    response_layers,
    response_std,
    run_label,
    run_responses,
)
from cnnlab.cli import main
from cnnlab.train.checkpoint import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def _assert_png(path: Path) -> None:
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.verify()


def _same_picture(a: torch.Tensor, b: torch.Tensor) -> bool:
    """a and b are the same picture up to a positive scale (as the figures show them)."""
    a, b = a / a.abs().max(), b / b.abs().max()
    return bool(torch.allclose(a, b, atol=1e-5))


# -- the three rules, by hand ----------------------------------------------------------------


def _pooled_net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 5, padding=2),  # 0: 16 x 16
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2),  # 2: 7 x 7, overlapping windows as in ZF and AlexNet
        nn.Conv2d(4, 6, 3, padding=1),  # 3: 7 x 7
        nn.ReLU(inplace=True),
        nn.Conv2d(6, 6, 3, padding=1),  # 5: 7 x 7
        nn.ReLU(inplace=True),
    )
    return net.eval()


def _by_hand(net: nn.Sequential, x: torch.Tensor, channel: int, method: str) -> torch.Tensor:
    """`_pooled_net`'s projection of the top unit of `channel`, each step written out."""
    conv1, conv2, conv3 = net[0], net[3], net[5]
    z1 = conv1(x)
    p1, switches = F.max_pool2d(F.relu(z1), 3, 2, return_indices=True)
    z2 = conv2(p1)
    z3 = conv3(F.relu(z2))
    a3 = F.relu(z3)
    n, _, _, w = a3.shape
    flat = a3[:, channel].flatten(1).argmax(dim=1)
    i = torch.arange(n)
    g = torch.zeros_like(a3)
    g[i, channel, flat // w, flat % w] = a3[i, channel, flat // w, flat % w]

    def relu_down(g: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        # Springenberg et al. 2015, Fig. 1: what each method lets through a ReLU.
        if method == "deconvnet":
            return g.clamp(min=0)
        if method == "guided":
            return g.clamp(min=0) * (z > 0)
        return g * (z > 0)

    g = F.conv_transpose2d(relu_down(g, z3), conv3.weight, padding=1)
    g = F.conv_transpose2d(relu_down(g, z2), conv2.weight, padding=1)
    # unpool: each value back to its switch; overlapping windows add up
    up = torch.zeros(z1.flatten(2).shape).scatter_add_(2, switches.flatten(2), g.flatten(2))
    return F.conv_transpose2d(relu_down(up.view_as(z1), z1), conv1.weight, padding=2)


def test_projections_are_the_hand_written_rules() -> None:
    net = _pooled_net()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        channel = int(net(x).amax(dim=(2, 3)).min(dim=0).values.argmax())  # on in every image
        expected = {m: _by_hand(net, x, channel, m) for m in METHODS}
    # The three rules give three different projections here, so each check tells them apart.
    assert not torch.allclose(expected["deconvnet"], expected["guided"])
    assert not torch.allclose(expected["guided"], expected["saliency"])
    for method in METHODS:
        got, values, _ = project(net, x, "6", channel, method=method)
        assert (values > 0).all() and expected[method].abs().sum() > 0
        torch.testing.assert_close(got, expected[method], rtol=1e-5, atol=1e-6)


def test_saliency_is_the_input_gradient() -> None:
    """Oracle: autograd's gradient of the unit, times its activation (the seed every method
    starts from), on the network as it is."""
    net = cnnlab.create_model("resnet20").eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    got, values, positions = project(net, x, "layer2", channel=7, method="saliency")
    for k in range(2):
        xk = x[k : k + 1].clone().requires_grad_(True)
        captured: list[torch.Tensor] = []
        handle = net.layer2.register_forward_hook(lambda _m, _i, o, out=captured: out.append(o))
        net(xk)
        handle.remove()
        r, c = positions[k].tolist()
        unit = captured[0][0, 7, r, c]
        (grad,) = torch.autograd.grad(unit, xk)
        assert float(unit.detach()) == pytest.approx(float(values[k]), rel=1e-5)
        expected = values[k] * grad[0]
        # float32 sums in another order (one image here, two there): relative to the largest
        scale = float(expected.abs().max())
        torch.testing.assert_close(got[k], expected, rtol=1e-4, atol=1e-5 * scale)


def test_rules_are_undone_and_refused_when_unknown() -> None:
    net = cnnlab.create_model("resnet20").eval()
    before = list(net.modules())
    with backward_rule(net, "guided"):
        assert any(isinstance(m, GuidedReLU) for m in net.modules())
        assert not any(isinstance(m, nn.ReLU) for m in net.modules())
    assert list(net.modules()) == before
    with backward_rule(net, "saliency"):
        assert list(net.modules()) == before  # the plain gradient keeps the ReLUs
    with pytest.raises(ValueError, match="deconvnet, guided, saliency"), backward_rule(net, "x"):
        pass

    class Functional(nn.Module):  # a ReLU no module swap can reach
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 2, 3)
            self.conv2 = nn.Conv2d(2, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv2(F.relu(self.conv1(x)))

    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="the guided projection swaps nn.ReLU"):
        project(Functional(), x, "conv2", channel=0, method="guided")
    project(Functional(), x, "conv2", channel=0, method="saliency")  # the plain gradient: fine


# -- without max pooling ---------------------------------------------------------------------


def _patch_detector() -> nn.Sequential:
    """A pooling-free net (like the CIFAR ResNets): a bright-blob detector, then two strided
    3x3 convs with positive weights and a batch norm. 24 x 24 -> 12 x 12 -> 6 x 6."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),  # 0
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1),  # 2: 12 x 12
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1),  # 5: 6 x 6
        nn.ReLU(),
    ).eval()
    with torch.no_grad():
        # Each 3x3 window sums its pixels x 0.1 over the 3 channels, less 0.5: on where it
        # covers at least two pixels of value 1, off on the dark background.
        net[0].weight.fill_(0.1)
        net[0].bias.fill_(-0.5)
        for conv in (net[2], net[5]):
            conv.weight.uniform_(0.5, 1.0)
            conv.bias.zero_()
    return net


def _bright_patch(top: int, left: int) -> torch.Tensor:
    x = torch.zeros(1, 3, 24, 24)
    x[:, :, top : top + 2, left : left + 2] = 1.0
    return x


def test_guided_projection_lands_on_the_patch_in_the_receptive_field() -> None:
    """Two images, each with a 2x2 bright patch at another place in the receptive field of the
    same unit: guided backpropagation lands on each image's patch; the deconvnet draws the
    same picture for both, over the whole field (what the issue saw on the CIFAR ResNets)."""
    net = _patch_detector()
    patches = ((5, 5), (10, 9))
    x = torch.cat([_bright_patch(*p) for p in patches])
    unit = torch.tensor([[2, 2], [2, 2]])
    (box, _) = receptive_field_boxes(net, "6", (24, 24), unit)
    # conv 5 row 2 <- conv 2 rows 3..5 <- conv 0 rows 5..11 <- input rows 4..12
    assert box == (4, 4, 13, 13)
    top, left, bottom, right = box
    guided, values, _ = project(net, x, "6", channel=0, positions=unit, method="guided")
    deconv, _, _ = project(net, x, "6", channel=0, positions=unit, method="deconvnet")
    assert (values > 0).all()
    for k, (r, c) in enumerate(patches):
        energy = guided[k].abs().sum(dim=0)
        assert energy.sum() > 0
        outside = energy.clone()
        outside[top:bottom, left:right] = 0
        assert outside.sum() == 0, "guided projection outside the receptive field"
        # Only the blob detector's active windows pass: within 2 pixels of the patch.
        near = energy.clone()
        near[r - 2 : r + 4, c - 2 : c + 4] = 0
        assert near.sum() == 0
        peak = divmod(int(energy.argmax()), 24)
        assert r <= peak[0] < r + 2 and c <= peak[1] < c + 2, (peak, (r, c))
        # The deconvnet ignores the image: it fills the whole field, patch or not.
        d = deconv[k].abs().sum(dim=0)
        assert (d[top:bottom, left:right] > 0).all()
    assert not _same_picture(guided[0], guided[1])
    assert _same_picture(deconv[0], deconv[1])


def test_without_pooling_only_the_deconvnet_ignores_the_image() -> None:
    """resnet20 (random weights, no max pooling): one unit of layer3 in two random images."""
    net = cnnlab.create_model("resnet20").eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    maps = stage_outputs(net, x, ["layer3"])["layer3"][:, :, 4, 4]
    channel = int(maps.min(dim=0).values.argmax())  # active at (4, 4) in both images
    assert (maps[:, channel] > 0).all()
    unit = torch.tensor([[4, 4], [4, 4]])
    got = {m: project(net, x, "layer3", channel, unit, method=m)[0] for m in METHODS}
    assert _same_picture(got["deconvnet"][0], got["deconvnet"][1])
    assert not _same_picture(got["guided"][0], got["guided"][1])
    assert not _same_picture(got["saliency"][0], got["saliency"][1])
    # With max pooling the deconvnet does see the image, through its switches.
    pooled = _pooled_net()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    a = pooled(x)[:, :, 3, 3]
    channel = int(a.min(dim=0).values.argmax())
    d, values, _ = project(pooled, x, "6", channel, torch.tensor([[3, 3], [3, 3]]))
    assert (values > 0).all() and not _same_picture(d[0], d[1])


def test_top_images_by_several_methods(tmp_path: Path) -> None:
    net = load_network("resnet20")
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))  # fmt: skip
    labels = torch.tensor([0, 1, 0, 1])
    kwargs = {"top": 3, "strongest": 2, "batch_size": 4}
    results = deconv_top_images(net, images, labels, ("cat", "dog"), "layer3", methods=METHODS,
                                **kwargs)  # fmt: skip
    alone = deconv_top_images(net, images, labels, ("cat", "dog"), "layer3", **kwargs)
    for res, one in zip(results, alone, strict=True):
        assert res.methods == METHODS and one.methods == ("deconvnet",)
        for u, v in zip(res.units, one.units, strict=True):
            assert list(u.projections) == list(METHODS)
            assert torch.equal(u.projection, u.projections["deconvnet"])
            torch.testing.assert_close(u.projections["deconvnet"], v.projection)
            top, left, bottom, right = u.box
            for p in u.projections.values():
                energy = p.abs().sum(dim=0)
                energy[top:bottom, left:right] = 0
                assert energy.sum() == 0
        guided = [u.projections["guided"] for u in res.units]
        assert not _same_picture(guided[0], guided[1])
    out = plot_deconv(results, tmp_path / "methods.png", "resnet20, three methods")
    _assert_png(out)
    with pytest.raises(ValueError, match="different methods"):
        deconv_top_images(net, images, labels, ("cat", "dog"), "layer3", methods=())
    with pytest.raises(ValueError, match="unknown projection method"):
        deconv_top_images(net, images, labels, ("cat", "dog"), "layer3", methods=("gradcam",))


@pytest.fixture
def image_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """root/test/<class>/<k>.png: 3 classes of 3 random 32x32 images; cache in tmp_path."""
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "tiny"
    rng = np.random.default_rng(0)
    for name in ("cat", "dog", "ship"):
        (root / "test" / name).mkdir(parents=True)
        for k in range(3):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "test" / name / f"{k}.png")
    return root


def test_cli_deconv_methods(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["visualize", "deconv", "resnet20", "--layer", "layer2", "--data", str(image_folder),
            "--channels", "3", "--top", "4"]  # fmt: skip
    for methods in (["guided"], ["deconvnet", "guided", "saliency"]):
        out = tmp_path / f"{len(methods)}.png"
        assert main([*argv, "--method", *methods, "--out", str(out)]) == 0
        _assert_png(out)
    with pytest.raises(SystemExit):
        main([*argv, "--method", "gradcam"])
    assert "invalid choice: 'gradcam'" in capsys.readouterr().err


# -- layer responses (He et al. 2015, Fig. 7) ------------------------------------------------


def test_response_layers_are_the_batch_norms_after_3x3_convs() -> None:
    x = torch.randn(1, 3, 32, 32)
    layers = response_layers(cnnlab.create_model("resnet20"), x)
    blocks = [f"layer{s}.{b}.bn{k}" for s in (1, 2, 3) for b in range(3) for k in (1, 2)]
    assert layers == ["bn1", *blocks]  # 19 = 6n + 1: every weighted layer but the fc
    assert response_layers(cnnlab.create_model("plain20"), x) == layers
    assert len(response_layers(cnnlab.create_model("resnet56"), x)) == 55
    # ImageNet ResNets: the 7x7 stem is not a 3x3 layer; a bottleneck has one 3x3 (bn2).
    x = torch.randn(1, 3, 64, 64)
    assert len(response_layers(cnnlab.create_model("resnet18"), x)) == 16
    bottleneck = response_layers(cnnlab.create_model("resnet50"), x)
    assert len(bottleneck) == 16 and all(p.endswith(".bn2") for p in bottleneck)
    with pytest.raises(ValueError, match="not followed by a batch norm"):
        response_layers(cnnlab.create_model("preact_resnet18"), x)
    with pytest.raises(ValueError, match="no 3x3 convolution"):
        response_layers(nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2)), x)


def _network(model: nn.Module, name: str = "resnet20") -> Network:
    return Network(
        model=model.eval(), name=name, source="test", classes=None,
        mean=torch.full((3,), 0.5), std=torch.full((3,), 0.25), image_size=(32, 32),
    )  # fmt: skip


def test_response_std_is_the_channel_mean_of_per_channel_stds() -> None:
    """Oracle: the batch norms' outputs for all images in one batch, by hooks, and the
    definition written out; `response_std` streams 3 images at a time."""
    torch.manual_seed(0)
    model = cnnlab.create_model("resnet20").eval()
    with torch.no_grad():  # trained-looking batch norms: scales and offsets of all sizes
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.1, 2.0)
                m.bias.normal_(0.0, 1.0)
                m.running_mean.normal_(0.0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    net = _network(model)
    images = torch.randint(0, 256, (7, 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))  # fmt: skip
    layers, std = response_std(net, images, batch_size=3)
    outputs = {}

    def keep(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        outputs[module] = output.clone()  # before the in-place ReLU; returns None: unchanged

    handles = [m.register_forward_hook(keep) for m in map(model.get_submodule, layers)]
    with torch.no_grad():
        model(net.normalize(images))
    for h in handles:
        h.remove()
    outputs = {p: outputs[model.get_submodule(p)] for p in layers}
    for p, s in zip(layers, std, strict=True):
        y = outputs[p].double()
        expected = y.std(dim=(0, 2, 3), unbiased=False).mean()
        assert s == pytest.approx(float(expected), rel=1e-6), p  # float32 batches of 3 or 7
        assert s != pytest.approx(float(y.std(unbiased=False)), rel=1e-3)  # not the whole tensor
    # A batch norm's gamma scales its layer's std; its beta (an offset) leaves it alone.
    with torch.no_grad():
        model.layer2[1].bn1.weight.mul_(3.0)
        model.layer2[1].bn1.bias.add_(5.0)
    _, scaled = response_std(net, images, batch_size=7)
    k = layers.index("layer2.1.bn1")
    assert scaled[k] == pytest.approx(3.0 * std[k], rel=1e-6)
    assert scaled[:k] == pytest.approx(std[:k], rel=1e-6)


def _write_run(folder: Path, model: str, options: dict[str, str] | None = None) -> Path:
    """A run folder as `cnnlab train` leaves it, with random weights (seeded by the name)."""
    torch.manual_seed(len(folder.name))
    net = cnnlab.create_model(model, num_classes=3, **(options or {}))
    folder.mkdir(parents=True)
    state = {
        "model": model, "model_options": options or {}, "num_classes": 3,
        "classes": ["cat", "dog", "ship"], "image_shape": [3, 32, 32],
        "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
        "model_state": net.state_dict(), "step": 1,
    }  # fmt: skip
    save_checkpoint(folder / "checkpoint.pt", state)
    config = {"model": model, "model_options": options or {}}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_runs_are_named_by_their_config(tmp_path: Path) -> None:
    a = _write_run(tmp_path / "a", "resnet20", {"shortcut": "B"})
    b = _write_run(tmp_path / "b", "plain20")
    c = _write_run(tmp_path / "c", "plain20")
    assert run_label(a, load_network(a)) == "resnet20-B"
    assert run_label(a / "checkpoint.pt", load_network(a)) == "resnet20-B"
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    got = run_responses([a, b, c / "checkpoint.pt"], images, batch_size=2)
    assert [r.name for r in got] == ["resnet20-B", "plain20 (b)", "plain20 (c)"]
    assert [r.model for r in got] == ["resnet20", "plain20", "plain20"]
    assert all(len(r.std) == 19 and r.images == 4 for r in got)
    assert got[0].ranked() == tuple(sorted(got[0].std, reverse=True))
    _assert_png(plot_responses(got, tmp_path / "r.png", "three runs"))


def test_mean_over_seeds() -> None:
    a = LayerResponses("r", "resnet20", ("x", "y"), (1.0, 2.0), 10)
    b = LayerResponses("r", "resnet20", ("x", "y"), (3.0, 6.0), 10)
    m = mean_responses([a, b], "r")
    assert (m.std, m.networks) == ((2.0, 4.0), 2)
    assert mean_responses([m, a], "r").std == pytest.approx((5 / 3, 10 / 3))
    with pytest.raises(ValueError, match="layers differ"):
        mean_responses([a, LayerResponses("r", "plain20", ("x",), (1.0,), 10)], "r")


def test_cli_responses(image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    runs = [_write_run(tmp_path / n, n) for n in ("plain20", "resnet20")]
    out = tmp_path / "responses.png"
    argv = ["visualize", "responses", *map(str, runs), "--data", str(image_folder)]
    assert main([*argv, "--limit", "5", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    _assert_png(out)
    assert main(["visualize", "responses", "alexnet", "--data", str(image_folder)]) == 2
    assert "not followed by a batch norm" in capsys.readouterr().err
