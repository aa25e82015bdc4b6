"""The classic networks (AlexNet, ZFNet, VGG, GoogLeNet) against their papers and torchvision.

Shape and count checks run on the meta device (shapes without arithmetic), so the 130M-parameter
VGGs cost nothing; the torchvision oracles compute real logits at small batch sizes.
"""

from __future__ import annotations

import hashlib
import io

import pytest
import torch
import torchvision
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from cnnlab.models import create_model
from cnnlab.models.alexnet import local_response_norm
from cnnlab.models.googlenet import (
    AUX_LOSS_WEIGHT,
    INCEPTION,
    MEDIUM_GRID,
    GoogLeNet,
    GoogLeNetOutputs,
    Inception,
)

CLASSIC = [
    "alexnet",
    "zfnet",
    "vgg11",
    "vgg11_lrn",
    "vgg13",
    "vgg16_c",
    "vgg16",
    "vgg19",
    "vgg11_bn",
    "vgg13_bn",
    "vgg16_bn",
    "vgg19_bn",
    "googlenet",
]


def _meta(name: str, **options: object) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **options)


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _output_sizes(model: nn.Module, size: int, kinds: tuple[type, ...]) -> list[tuple[int, ...]]:
    """(C, H, W) of every `features` layer of the given kinds, in order, on the meta device."""
    shapes: list[tuple[int, ...]] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape[1:])))
        for m in model.features
        if isinstance(m, kinds)
    ]
    with torch.no_grad():
        model(torch.empty(1, 3, size, size, device="meta"))
    for h in hooks:
        h.remove()
    return shapes


# --- local response normalisation ------------------------------------------------------------


def test_local_response_norm_computes_the_papers_formula() -> None:
    # Krizhevsky et al. 2012, section 3.3: b_i = a_i / (k + alpha * sum_j a_j^2) ** beta, j over
    # the n maps around i (clipped at the ends), k=2, n=5, alpha=1e-4, beta=0.75; no 1/n.
    torch.manual_seed(0)
    a = 30 * torch.randn(2, 7, 3, 3)  # large enough that the sum matters
    expected = torch.empty_like(a)
    for i in range(7):
        window = a[:, max(0, i - 2) : min(7, i + 3)]
        expected[:, i] = a[:, i] / (2 + 1e-4 * (window**2).sum(1)) ** 0.75
    torch.testing.assert_close(local_response_norm()(a), expected)


# --- torchvision oracles ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "torchvision_builder", "size"),
    [
        ("alexnet", torchvision.models.alexnet, 224),
        # The adaptive 7x7 pool lets the VGGs run at 64, which keeps this cheap.
        ("vgg11", torchvision.models.vgg11, 64),
        ("vgg11_bn", torchvision.models.vgg11_bn, 64),
    ],
)
def test_torchvision_weights_load_and_give_the_same_logits(
    name: str, torchvision_builder: object, size: int
) -> None:
    torch.manual_seed(0)
    reference = torchvision_builder(weights=None).eval()
    ours = create_model(name, layout="torchvision").eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x))


def test_torchvision_googlenet_loads_and_gives_the_same_logits() -> None:
    torch.manual_seed(0)
    reference = torchvision.models.googlenet(
        weights=None, aux_logits=True, init_weights=True, transform_input=False
    ).eval()
    ours = create_model("googlenet", layout="torchvision").eval()
    assert isinstance(ours, GoogLeNet)
    ours.load_state_dict(reference.state_dict(), strict=True)
    # torchvision runs its auxiliary heads only in training mode; feed them its 4a and 4d maps.
    maps: dict[str, Tensor] = {}
    reference.inception4a.register_forward_hook(lambda _m, _i, out: maps.update(a=out))
    reference.inception4d.register_forward_hook(lambda _m, _i, out: maps.update(d=out))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = reference(x)
        out = ours.forward_with_aux(x)
        torch.testing.assert_close(ours(x), expected)
        torch.testing.assert_close(out.logits, expected)
        torch.testing.assert_close(out.aux1, reference.aux1(maps["a"]))
        torch.testing.assert_close(out.aux2, reference.aux2(maps["d"]))


@pytest.mark.parametrize("name", ["vgg11", "vgg13", "vgg16", "vgg19", "vgg16_bn", "vgg19_bn"])
def test_vgg_paper_layout_has_torchvisions_parameters(name: str) -> None:
    # At 224 the two layouts are one network; the names and shapes must agree too.
    with torch.device("meta"):
        reference = getattr(torchvision.models, name)(weights=None)
    ours = _meta(name)
    expected = {k: v.shape for k, v in reference.state_dict().items()}
    assert {k: v.shape for k, v in ours.state_dict().items()} == expected


# --- AlexNet ----------------------------------------------------------------------------------


def test_alexnet_paper_layout() -> None:
    model = _meta("alexnet")
    assert _n_params(model) == 60_965_224  # section 3 and the issue: 60,965,224 at 1000 classes
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    # Two-GPU layout (section 3.2): conv2, conv4 and conv5 see only their own GPU's half.
    assert [c.groups for c in convs] == [1, 2, 1, 2, 2]
    assert [c.out_channels for c in convs] == [96, 256, 384, 384, 256]
    # LRN after the ReLUs of conv1 and conv2, each followed by an overlapping 3x3/2 max-pool.
    layers = list(model.features)
    for i in (2, 6):
        assert isinstance(layers[i], nn.LocalResponseNorm)
        assert isinstance(layers[i + 1], nn.MaxPool2d)
        assert (layers[i + 1].kernel_size, layers[i + 1].stride) == (3, 2)
    sizes = _output_sizes(model, 227, (nn.Conv2d, nn.MaxPool2d))
    assert sizes[0] == (96, 55, 55)
    assert sizes[-1] == (256, 6, 6)


def test_alexnet_torchvision_layout_is_the_one_gpu_variant() -> None:
    model = _meta("alexnet", layout="torchvision")
    assert _n_params(model) == 61_100_840  # torchvision's AlexNet_Weights num_params
    assert not any(isinstance(m, nn.LocalResponseNorm) for m in model.modules())


# --- ZFNet ------------------------------------------------------------------------------------


def test_zfnet_reproduces_the_map_sizes_of_fig3() -> None:
    model = _meta("zfnet")
    sizes = _output_sizes(model, 224, (nn.Conv2d, nn.MaxPool2d))
    # conv1, pool1, conv2, pool2, conv3, conv4, conv5, pool5
    assert sizes == [
        (96, 110, 110),
        (96, 55, 55),
        (256, 26, 26),
        (256, 13, 13),
        (384, 13, 13),
        (384, 13, 13),
        (256, 13, 13),
        (256, 6, 6),
    ]
    conv1 = model.features[0]
    assert (conv1.kernel_size, conv1.stride) == ((7, 7), (2, 2))
    # Contrast normalisation follows the first two max-pools (Fig. 3).
    assert isinstance(model.features[3], nn.LocalResponseNorm)
    assert isinstance(model.features[7], nn.LocalResponseNorm)


# --- VGG --------------------------------------------------------------------------------------


def test_vgg_parameter_counts_match_table2() -> None:
    # Table 2, in millions: A, A-LRN 133; B 133; C 134; D 138; E 144.
    expected = {
        "vgg11": 133,
        "vgg11_lrn": 133,
        "vgg13": 133,
        "vgg16_c": 134,
        "vgg16": 138,
        "vgg19": 144,
    }
    counts = {name: round(_n_params(_meta(name)) / 1e6) for name in expected}
    assert counts == expected


def test_vgg16_c_has_1x1_convs_where_d_has_3x3() -> None:
    def kernels(name: str) -> list[int]:
        return [m.kernel_size[0] for m in _meta(name).features if isinstance(m, nn.Conv2d)]

    assert kernels("vgg16_c") == [3, 3, 3, 3, 3, 3, 1, 3, 3, 1, 3, 3, 1]
    assert kernels("vgg16") == [3] * 13


def test_vgg11_lrn_normalises_after_the_first_conv() -> None:
    layers = list(_meta("vgg11_lrn").features)
    assert [type(m) for m in layers[:4]] == [nn.Conv2d, nn.ReLU, nn.LocalResponseNorm, nn.MaxPool2d]
    assert sum(isinstance(m, nn.LocalResponseNorm) for m in layers) == 1
    assert not any(isinstance(m, nn.LocalResponseNorm) for m in _meta("vgg11").modules())


def test_vgg19_costs_19_6_billion_multiply_adds() -> None:
    model = _meta("vgg19").eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.empty(1, 3, 224, 224, device="meta"))
    # He et al. 2015, Fig. 3: "VGG-19 model (19.6 billion FLOPs)", FLOPs meaning multiply-adds.
    assert round(counter.get_total_flops() / 2 / 1e9, 1) == 19.6


def test_vgg_without_a_torchvision_twin_refuses_that_layout() -> None:
    # Builders without a torchvision twin take no layout option at all.
    with pytest.raises(ValueError, match="layout"):
        create_model("vgg16_c", layout="torchvision")
    with pytest.raises(ValueError, match="torchvision"):
        create_model("vgg16", layout="caffe")


# --- GoogLeNet --------------------------------------------------------------------------------


def test_googlenet_paper_layout_has_true_5x5_convs_and_lrn_in_the_stem() -> None:
    paper, tv = _meta("googlenet"), _meta("googlenet", layout="torchvision")
    modules = [m for m in paper.modules() if isinstance(m, Inception)]
    assert len(modules) == len(INCEPTION) == 9
    assert all(m.branch3[1].conv.kernel_size == (5, 5) for m in modules)
    assert all(
        m.branch3[1].conv.kernel_size == (3, 3) for m in tv.modules() if isinstance(m, Inception)
    )
    assert isinstance(paper.lrn1, nn.LocalResponseNorm)
    assert isinstance(paper.lrn2, nn.LocalResponseNorm)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in paper.modules())
    # Table 1's output column: each module's output feeds the next one.
    assert [w.out_channels for w in INCEPTION.values()] == [
        256, 480, 512, 512, 512, 528, 832, 832, 1024
    ]  # fmt: skip


def test_googlenet_forward_gives_logits_and_aux_heads_train() -> None:
    torch.manual_seed(0)
    model = create_model("googlenet", num_classes=10)
    assert isinstance(model, GoogLeNet)
    x = torch.randn(2, 3, 224, 224)
    ran_aux: list[bool] = []
    model.aux1.register_forward_hook(lambda *_: ran_aux.append(True))

    with torch.no_grad():
        for train in (True, False):
            model.train(train)
            logits = model(x)
            assert isinstance(logits, Tensor)
            assert logits.shape == (2, 10)
    assert not ran_aux  # forward never runs the auxiliary classifiers

    model.train()
    out = model.forward_with_aux(x)
    assert isinstance(out, GoogLeNetOutputs)
    assert [t.shape for t in out] == [(2, 10)] * 3
    target = torch.tensor([3, 7])
    ce = nn.functional.cross_entropy
    loss = ce(out.logits, target) + AUX_LOSS_WEIGHT * (ce(out.aux1, target) + ce(out.aux2, target))
    loss.backward()
    for head in (model.aux1, model.aux2):
        assert head.fc2.weight.grad is not None and head.fc2.weight.grad.abs().sum() > 0
        assert head.conv.conv.weight.grad is not None
    assert model.conv1.conv.weight.grad.abs().sum() > 0


# --- GoogLeNet factorised (Szegedy et al. 2015, arXiv:1512.00567) ------------------------------


def _kernels(branch: nn.Sequential) -> list[tuple[int, ...]]:
    return [block.conv.kernel_size for block in branch]


def _widths(branch: nn.Sequential) -> list[int]:
    return [block.conv.out_channels for block in branch]


def test_googlenet_without_factorize_is_the_2014_network_unchanged() -> None:
    # Recorded from main at eccee0c, before `factorize` existed: the state dict's names and
    # shapes, and the logits of the same seed (init order unchanged).
    def build(**options: object) -> nn.Module:
        torch.manual_seed(0)
        return create_model("googlenet", num_classes=10, **options).eval()

    default = build()
    described = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in default.state_dict().items())
    assert hashlib.sha256(described.encode()).hexdigest() == (
        "2ec1d76e8f52dac62110798908beffcae1f85aa40ae5cd25538d28d4076b36ed"
    )
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = default(x)
    assert logits[0, :4].tolist() == pytest.approx(
        [-0.0112712, 0.0036516, -0.0035948, -0.0166588], abs=1e-6
    )
    same = build(factorize="none")  # and factorize=None is `default`
    assert repr(same) == repr(default)
    for (k, v), (k2, v2) in zip(
        default.state_dict().items(), same.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(v, v2)
    with torch.no_grad():
        assert torch.equal(same(x), logits)


def test_googlenet_factorize_5x5_is_two_3x3_at_the_reduced_width() -> None:
    # Section 3.1, Fig. 5: 1x1 (#5x5red), 3x3 (#5x5red), 3x3 (#5x5), a ReLU after each.
    base, net = _meta("googlenet"), _meta("googlenet", factorize="5x5")
    for name, w in INCEPTION.items():
        m = getattr(net, f"inception{name}")
        assert _kernels(m.branch3) == [(1, 1), (3, 3), (3, 3)]
        assert _widths(m.branch3) == [w.ch5x5red, w.ch5x5red, w.ch5x5]
        assert all(isinstance(block.relu, nn.ReLU) for block in m.branch3)
        assert _kernels(m.branch2) == [(1, 1), (3, 3)]  # the 3x3 branch as in 2014
    # Per module, the 5x5 (25 r o weights + o biases) becomes 3x3 r -> r (9 r r + r) and
    # 3x3 r -> o (9 r o + o): 25 -> 18 weights per channel pair at equal widths r = o.
    saved = sum(
        (25 * w.ch5x5red * w.ch5x5 + w.ch5x5)
        - (9 * w.ch5x5red**2 + w.ch5x5red + 9 * w.ch5x5red * w.ch5x5 + w.ch5x5)
        for w in INCEPTION.values()
    )
    assert saved == 308_096
    assert _n_params(base) - _n_params(net) == saved
    assert _n_params(net) == 13_070_184  # the module docstring's table


def test_googlenet_factorize_asymmetric_on_the_14x14_grid_only() -> None:
    # Section 3.2, Fig. 6 with n = 3, on 4a..4e; Fig. 5 (the 5x5 as two 3x3) elsewhere.
    five, net = _meta("googlenet", factorize="5x5"), _meta("googlenet", factorize="asymmetric")
    assert MEDIUM_GRID == ("4a", "4b", "4c", "4d", "4e")
    for name, w in INCEPTION.items():
        m, m5 = getattr(net, f"inception{name}"), getattr(five, f"inception{name}")
        if name not in MEDIUM_GRID:
            assert repr(m) == repr(m5)
            continue
        assert _kernels(m.branch2) == [(1, 1), (1, 3), (3, 1)]
        assert _widths(m.branch2) == [w.ch3x3red, w.ch3x3red, w.ch3x3]
        assert _kernels(m.branch3) == [(1, 1), (1, 3), (3, 1), (1, 3), (3, 1)]
        assert _widths(m.branch3) == [w.ch5x5red] * 4 + [w.ch5x5]
        assert [b.conv.padding for b in m.branch3[1:]] == [(0, 1), (1, 0)] * 2
    # Each 3x3 r -> c (9 r c + c) becomes 1x3 r -> r and 3x1 r -> c (3 r r + r + 3 r c + c):
    # 9 -> 6 weights per channel pair at equal widths (33%, section 3.2).
    saved = 0
    for name in MEDIUM_GRID:
        w = INCEPTION[name]
        for r, c in ((w.ch3x3red, w.ch3x3), (w.ch5x5red, w.ch5x5red), (w.ch5x5red, w.ch5x5)):
            saved += (9 * r * c + c) - (3 * r * r + r + 3 * r * c + c)
    assert saved == 828_544
    assert _n_params(five) - _n_params(net) == saved
    assert _n_params(net) == 12_241_640


def test_googlenet_factorized_runs_with_its_auxiliary_heads() -> None:
    torch.manual_seed(0)
    net = create_model("googlenet", num_classes=10, factorize="asymmetric").eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    out = _meta("googlenet", factorize="asymmetric").forward_with_aux(
        torch.empty(2, 3, 224, 224, device="meta")
    )
    assert [t.shape for t in out] == [(2, 1000)] * 3


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"factorize": "7x7"}, "factorize='7x7' is not valid; choose one of 'none', '5x5'"),
        ({"factorize": "5x5", "layout": "torchvision"}, "use it with layout='paper'"),
    ],
)
def test_googlenet_factorize_errors_name_the_fix(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _meta("googlenet", **options)


# --- pickling ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CLASSIC)
def test_models_pickle(name: str) -> None:
    model = _meta(name)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert type(loaded) is type(model)
    assert repr(loaded) == repr(model)
