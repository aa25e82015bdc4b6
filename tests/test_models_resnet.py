"""The ResNet family: torchvision as an oracle, the papers' numbers, shortcuts, plain twins,
pre-activation units.

Deep networks are built on the meta device (shapes only, no memory) wherever only structure,
parameters or multiply-adds are checked; forwards run on small inputs.
"""

from __future__ import annotations

import io

import pytest
import torch
import torchvision
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from cnnlab.models import create_model, model_card
from cnnlab.models.layers import (
    IdentityShortcut,
    ProjectionShortcut,
    ZeroPadShortcut,
    make_shortcut,
)
from cnnlab.models.preact_resnet import PreActBasicBlock, PreActBottleneck
from cnnlab.models.resnet import BasicBlock, Bottleneck, zero_init_residual


def meta_model(name: str, **options: object) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **options)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def macs(model: nn.Module, size: int) -> int:
    """Multiply-adds for one image, measured by torch's flop counter (2 flops per MAC)."""
    with FlopCounterMode(display=False) as counter:
        model.eval()(torch.empty(1, 3, size, size, device="meta"))
    return counter.get_total_flops() // 2


def weighted_layers(model: nn.Module) -> int:
    """Convs and linear layers on the main path, as the papers count depth."""
    return sum(
        isinstance(m, nn.Conv2d | nn.Linear) and "downsample" not in name
        for name, m in model.named_modules()
    )


def blocks(model: nn.Module) -> list[nn.Module]:
    kinds = (BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck)
    return [m for m in model.modules() if isinstance(m, kinds)]


def randomize_batch_norm(model: nn.Module) -> None:
    # Fresh batch norms are near-identities in eval mode; random statistics make the
    # comparison see every buffer.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)


# -- torchvision oracle ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_weights_give_the_same_logits(name: str) -> None:
    torch.manual_seed(0)
    theirs = getattr(torchvision.models, name)(weights=None)  # random init, no download
    with torch.no_grad():
        randomize_batch_norm(theirs)
    ours = create_model(name, layout="torchvision")
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), theirs.eval()(x), rtol=0, atol=1e-5)
        if name == "resnet50":
            # Same names and shapes, but the paper's stride placement is another function.
            paper = create_model(name)
            paper.load_state_dict(theirs.state_dict(), strict=True)
            assert not torch.allclose(paper.eval()(x), theirs(x), atol=1e-3)


@pytest.mark.parametrize("name", ["resnet34", "resnet101", "resnet152"])
def test_torchvision_state_dict_names_and_shapes_match(name: str) -> None:
    with torch.device("meta"):
        theirs = getattr(torchvision.models, name)(weights=None)
    ours = meta_model(name, layout="torchvision")
    theirs_shapes = {k: v.shape for k, v in theirs.state_dict().items()}
    assert {k: v.shape for k, v in ours.state_dict().items()} == theirs_shapes


def test_torchvision_layout_has_option_b_only() -> None:
    with pytest.raises(ValueError, match="shortcut='B'"):
        create_model("resnet18", shortcut="A", layout="torchvision")
    with pytest.raises(ValueError, match="'paper', 'torchvision'"):
        create_model("resnet18", layout="caffe")


# -- the papers' numbers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "paper_gmacs"),
    [
        ("resnet18", 1.8),
        ("resnet34", 3.6),
        ("resnet50", 3.8),
        ("resnet101", 7.6),
        ("resnet152", 11.3),
    ],
)
def test_table1_multiply_adds(name: str, paper_gmacs: float) -> None:
    model = meta_model(name)
    measured = macs(model, 224)
    assert measured == model_card(name).macs
    # Table 1 prints one decimal and rounds loosely (ResNet-50's 3.86G reads 3.8G).
    assert abs(measured / 1e9 - paper_gmacs) < 0.07


def test_torchvision_layout_costs_more_than_table1() -> None:
    assert macs(meta_model("resnet50", layout="torchvision"), 224) / 1e9 > 4.0


@pytest.mark.parametrize(
    ("name", "n", "params"),
    [
        ("resnet20", 3, 269_722),
        ("resnet56", 9, 853_018),
        ("resnet110", 18, 1_727_962),
        ("resnet1202", 200, 19_421_274),
    ],
)
def test_cifar_parameters_and_depth(name: str, n: int, params: int) -> None:
    model = meta_model(name)
    assert num_params(model) == params == model_card(name).params
    assert weighted_layers(model) == 6 * n + 2
    assert len(blocks(model)) == 3 * n  # 3n shortcuts
    if name != "resnet1202":
        # Option A adds no parameters: the plain twin has exactly as many (section 4.2).
        assert num_params(meta_model(name.replace("resnet", "plain"))) == params


@pytest.mark.parametrize(
    ("name", "n", "paper_millions"),
    [("preact_resnet164", 18, 1.7), ("preact_resnet1001", 111, 10.2)],
)
def test_preact_cifar_parameters_and_depth(name: str, n: int, paper_millions: float) -> None:
    model = meta_model(name)
    assert weighted_layers(model) == 9 * n + 2
    # The paper's 10.2M for ResNet-1001 counts conv and fc weights, not batch norm.
    weights = sum(
        p.numel()
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
        for p in m.parameters()
    )
    assert round(weights / 1e6, 1) == paper_millions


def test_he_init_without_zeroed_batch_norms() -> None:
    torch.manual_seed(0)
    model = create_model("resnet20")
    # He et al. 2015b: std sqrt(2 / fan_out); layer3 convs have 36,864 weights each.
    conv = model.layer3[1].conv1
    assert conv.weight.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.05)
    # Every batch norm starts at scale 1, the last of each block too (no zero-init: that is
    # Goyal et al. 2017, not the paper).
    assert all(
        torch.equal(m.weight, torch.ones_like(m.weight))
        for m in model.modules()
        if isinstance(m, nn.BatchNorm2d)
    )


@pytest.mark.parametrize("name, blocks", [("resnet20", 9), ("resnet50", 16)])
def test_zero_init_residual_starts_every_block_as_its_shortcut(name: str, blocks: int) -> None:
    torch.manual_seed(0)
    model = create_model(name).eval()
    assert zero_init_residual(model) == blocks
    last = "bn2" if name == "resnet20" else "bn3"
    for m in model.modules():
        if isinstance(m, BasicBlock | Bottleneck):
            assert torch.count_nonzero(getattr(m, last).weight) == 0
            assert torch.count_nonzero(m.bn1.weight) == m.bn1.weight.numel()  # only the last
            x = torch.randn(2, m.conv1.in_channels, 8, 8).relu()  # a block's input is a ReLU's
            assert torch.allclose(m(x), torch.relu(m.downsample(x)))


@pytest.mark.parametrize("name", ["plain20", "preact_resnet110"])
def test_zero_init_residual_refuses_nets_without_papers_blocks(name: str) -> None:
    with pytest.raises(ValueError, match="zero_init_residual is for the ResNets"):
        zero_init_residual(create_model(name))


def test_cifar_forward_shape() -> None:
    model = create_model("resnet20")
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


# -- shortcut options ------------------------------------------------------------------------


def test_option_a_zero_pads_a_strided_subsample() -> None:
    shortcut = make_shortcut("A", 2, 4, stride=2)
    assert isinstance(shortcut, ZeroPadShortcut)
    assert num_params(shortcut) == 0
    assert "ZeroPadShortcut(2, 4, stride=2)" in repr(shortcut)
    x = torch.arange(1, 33, dtype=torch.float32).reshape(1, 2, 4, 4)
    expected = torch.zeros(1, 4, 2, 2)
    expected[0, 0] = torch.tensor([[1.0, 3.0], [9.0, 11.0]])
    expected[0, 1] = torch.tensor([[17.0, 19.0], [25.0, 27.0]])
    assert torch.equal(shortcut(x), expected)
    assert isinstance(make_shortcut("A", 4, 4, stride=1), IdentityShortcut)


@pytest.mark.parametrize(
    ("option", "same_shape", "changed_shape"),
    [
        ("A", IdentityShortcut, ZeroPadShortcut),
        ("B", IdentityShortcut, ProjectionShortcut),
        ("C", ProjectionShortcut, ProjectionShortcut),
    ],
)
def test_shortcut_options(option: str, same_shape: type, changed_shape: type) -> None:
    assert type(make_shortcut(option, 64, 64, 1)) is same_shape
    assert type(make_shortcut(option, 64, 128, 2)) is changed_shape
    projection = make_shortcut("B", 64, 128, 2)
    assert projection[0].stride == (2, 2) and isinstance(projection[1], nn.BatchNorm2d)


@pytest.mark.parametrize(("option", "projections"), [("A", 0), ("B", 3), ("C", 16)])
def test_resnet34_projections_per_option(option: str, projections: int) -> None:
    model = meta_model("resnet34", shortcut=option)
    found = [m for m in model.modules() if isinstance(m, ProjectionShortcut)]
    assert len(found) == projections
    if option == "A":
        assert sum(isinstance(m, ZeroPadShortcut) for m in model.modules()) == 3
        assert num_params(model) == num_params(meta_model("plain34"))


def test_invalid_shortcut_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="'A', 'B', 'C'"):
        create_model("resnet50", shortcut="D")
    with pytest.raises(ValueError, match="'A', 'B', 'C'"):
        make_shortcut("D", 16, 16, 1)
    with pytest.raises(ValueError, match="'A', 'B'"):
        create_model("resnet20", shortcut="D")


# -- plain twins -----------------------------------------------------------------------------


@pytest.mark.parametrize(("plain", "resnet"), [("plain20", "resnet20"), ("plain18", "resnet18")])
def test_plain_blocks_have_no_shortcut(plain: str, resnet: str) -> None:
    assert all(b.downsample is None for b in blocks(meta_model(plain)))
    torch.manual_seed(0)
    x = torch.randn(2, 16 if plain == "plain20" else 64, 8, 8)
    outputs = []
    for name in (plain, resnet):
        block = create_model(name).layer1[0].eval()
        with torch.no_grad():  # zero the residual branch: bn2 outputs 0
            block.bn2.weight.zero_()
            block.bn2.bias.zero_()
            outputs.append(block(x))
    assert torch.equal(outputs[0], torch.zeros_like(x))  # plain: nothing left
    assert torch.equal(outputs[1], torch.relu(x))  # residual: relu(0 + identity(x))


# -- stride placement ------------------------------------------------------------------------


def test_bottleneck_stride_placement() -> None:
    paper = meta_model("resnet50").layer2[0]
    assert paper.conv1.stride == (2, 2) and paper.conv2.stride == (1, 1)
    v15 = meta_model("resnet50", layout="torchvision").layer2[0]
    assert v15.conv1.stride == (1, 1) and v15.conv2.stride == (2, 2)
    assert paper.downsample[0].stride == v15.downsample[0].stride == (2, 2)


# -- pre-activation --------------------------------------------------------------------------


def call_order(module: nn.Module, x: Tensor) -> list[str]:
    order: list[str] = []
    handles = [
        m.register_forward_hook(lambda mod, i, o, name=name: order.append(name))
        for name, m in module.named_children()
    ]
    with torch.no_grad():
        module(x)
    for h in handles:
        h.remove()
    return order


def test_preact_unit_is_bn_relu_conv_with_nothing_after_the_addition() -> None:
    model = create_model("preact_resnet110").eval()
    unit = model.layer1[1]
    x = torch.randn(1, 16, 8, 8)  # negative values too: a ReLU after the addition would show
    # shortcut branch (identity) first, then the residual branch: BN-ReLU before each conv
    assert call_order(unit, x) == ["bn1", "relu", "downsample", "conv1", "bn2", "relu", "conv2"]
    with torch.no_grad():
        unit.conv2.weight.zero_()  # residual branch outputs 0
        assert torch.equal(unit(x), x)  # identity all the way: x_{l+1} = x_l
    # The stem's BN-ReLU is the first unit's pre-activation; a final BN-ReLU precedes pooling.
    assert model.layer1[0].bn1 is None
    stem = ["conv1", "bn1", "relu"]
    head = ["final_bn", "relu", "avgpool", "fc"]
    top = call_order(model, torch.randn(1, 3, 8, 8))  # small input: only the order matters
    assert top == [*stem, "layer1", "layer2", "layer3", *head]


def test_preact_projection_takes_the_preactivated_input() -> None:
    torch.manual_seed(0)
    unit = create_model("preact_resnet164").layer2[0].eval()
    with torch.no_grad():
        randomize_batch_norm(unit)
    seen: list[Tensor] = []
    unit.downsample.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    x = torch.randn(1, 64, 8, 8)
    with torch.no_grad():
        unit(x)
        torch.testing.assert_close(seen[0], torch.relu(unit.bn1(x)))
    assert type(unit.downsample) is ProjectionShortcut and len(unit.downsample) == 1


def test_preact_imagenet_forward() -> None:
    model = create_model("preact_resnet18", num_classes=7)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 7)


# -- pickling --------------------------------------------------------------------------------


def test_resnet20_option_a_pickles() -> None:
    model = create_model("resnet20", shortcut="A").eval()
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert "ZeroPadShortcut" in repr(loaded)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_resnet164_is_the_original_bottleneck_network() -> None:
    # He et al. 2016, Table 3's baseline: 9n+2 = 164 weighted layers (n = 18), 1.7M parameters,
    # post-activation bottleneck units with outputs 64, 128, 256 wide.
    model = create_model("resnet164")
    convs = [
        name
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Conv2d) and "downsample" not in name
    ]
    assert len(convs) + 1 == 164
    assert [model.layer1[0].conv3.out_channels, model.layer2[0].conv3.out_channels,
            model.layer3[0].conv3.out_channels] == [64, 128, 256]  # fmt: skip
    assert model.layer2[0].conv1.stride == (2, 2)  # the paper layout's stride on the first 1x1
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == 1.7
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
