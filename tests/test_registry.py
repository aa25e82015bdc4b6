"""Every registered network is built and held to its card (tests driven by the registry)."""

from __future__ import annotations

import io

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import cnnlab
from cnnlab.models.registry import UnknownModelError

ALL = cnnlab.list_models()
# Built for real (forward and backward on the CPU) at the card's input size; the heaviest few
# are held to their cards on the meta device only, to keep `make test` short.
HEAVY = {
    "resnet1202", "preact_resnet1001", "preact_resnet200", "preact_resnet152",
    "vgg19", "vgg19_bn", "resnet152",
}  # fmt: skip


def test_the_issue_list_is_registered() -> None:
    expected = {
        "alexnet", "zfnet", "googlenet",
        "vgg11", "vgg11_lrn", "vgg13", "vgg16_c", "vgg16", "vgg19",
        "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn",
        *(f"resnet{d}" for d in (18, 34, 50, 101, 152)),
        *(f"plain{d}" for d in (18, 34, 50, 101, 152)),
        *(f"resnet{d}" for d in (20, 32, 44, 56, 110, 1202)),
        *(f"plain{d}" for d in (20, 32, 44, 56, 110)),
        "preact_resnet110", "preact_resnet164", "preact_resnet1001",
        *(f"preact_resnet{d}" for d in (18, 34, 50, 101, 152, 200)),
    }  # fmt: skip
    assert expected <= set(ALL), sorted(expected - set(ALL))


def _meta(name: str, **options: object) -> torch.nn.Module:
    with torch.device("meta"):
        return cnnlab.create_model(name, **options)


@pytest.mark.parametrize("name", ALL)
def test_card_matches_the_built_model(name: str) -> None:
    card = cnnlab.model_card(name)
    model = _meta(name, num_classes=card.num_classes)
    assert sum(p.numel() for p in model.parameters()) == card.params
    prof = cnnlab.profile(name, num_classes=card.num_classes)
    assert prof.params == card.params
    assert prof.macs == card.macs
    # torch's own counter, two per multiply-add, on the same meta pass.
    x = torch.empty(1, 3, card.input_size, card.input_size, device="meta")
    with FlopCounterMode(display=False) as counter:
        model.eval()(x)
    assert counter.get_total_flops() == 2 * card.macs
    assert card.paper and card.family
    for r in card.reported:
        assert r.source and 0 < r.value < 100


@pytest.mark.parametrize("name", [n for n in ALL if n not in HEAVY])
def test_builds_runs_and_backpropagates(name: str) -> None:
    card = cnnlab.model_card(name)
    torch.manual_seed(0)
    model = cnnlab.create_model(name, num_classes=7)
    x = torch.randn(2, 3, card.input_size, card.input_size)
    logits = model.train()(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 7)
    assert torch.isfinite(logits).all()
    loss = logits.sum()
    if hasattr(model, "forward_with_aux"):
        # GoogLeNet's auxiliary heads exist for training only and reach the loss this way.
        loss = sum(out.sum() for out in model.forward_with_aux(x))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.eval()(x[:1]).shape == (1, 7)


@pytest.mark.parametrize("name", ALL)
def test_pickles_whole(name: str) -> None:
    # torch.save(model) pickles the module itself: no lambdas, only named modules.
    model = _meta(name)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    again = torch.load(buffer, weights_only=False)
    assert type(again) is type(model)
    assert repr(again) == repr(model)


def test_list_models_filters_with_fnmatch() -> None:
    assert cnnlab.list_models("resnet*") == [n for n in ALL if n.startswith("resnet")]
    assert cnnlab.list_models("vgg1?_bn") == ["vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"]
    assert cnnlab.list_models("nothing*") == []
    # natural order: resnet20 before resnet110
    resnets = cnnlab.list_models("resnet*")
    assert resnets.index("resnet20") < resnets.index("resnet110")


def test_unknown_name_names_the_closest() -> None:
    with pytest.raises(UnknownModelError, match="resnet56") as info:
        cnnlab.create_model("resnet65")
    assert "unknown model 'resnet65'" in str(info.value)
    with pytest.raises(UnknownModelError):
        cnnlab.model_card("lenet")


def test_bad_options_name_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="'A'.*'B'.*'C'"):
        cnnlab.create_model("resnet18", shortcut="D")
    with pytest.raises(ValueError, match="'A', 'B'"):
        cnnlab.create_model("resnet20", shortcut="D")
    with pytest.raises(ValueError, match="does not take option.*colour"):
        cnnlab.create_model("resnet20", colour="red")
    with pytest.raises(ValueError, match="layout"):
        cnnlab.create_model("resnet20", layout="torchvision")


@pytest.mark.parametrize(
    ("name", "params", "paper_error"),
    [
        ("resnet20", 269_722, 8.75),
        ("resnet56", 853_018, 6.97),
        ("resnet110", 1_727_962, None),
        ("resnet1202", 19_421_274, 7.93),
        ("alexnet", 60_965_224, None),
    ],
)
def test_known_parameter_counts(name: str, params: int, paper_error: float | None) -> None:
    card = cnnlab.model_card(name)
    assert card.params == params
    if paper_error is not None:
        assert card.reported[0].value == paper_error
        assert card.reported[0].source == "Table 6"


@pytest.mark.parametrize(
    ("name", "giga"),
    [("resnet18", 1.8), ("resnet34", 3.6), ("resnet50", 3.8), ("resnet101", 7.6),
     ("resnet152", 11.3), ("vgg19", 19.6)],
)  # fmt: skip
def test_paper_multiply_adds(name: str, giga: float) -> None:
    # He et al. 2015, Table 1 ("FLOPs" there are multiply-adds), paper layout; VGG-19 as quoted.
    # The paper rounds loosely (ResNet-50's 3.86G is printed 3.8), hence the tolerance.
    assert abs(cnnlab.model_card(name).macs / 1e9 - giga) < 0.07
