"""The profiler against hand-checked numbers and torch's own flop counter."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import cnnlab
from cnnlab.analysis.complexity import InputSizeError, LayerRow, smallest_input_size


def test_alexnet_conv1_row_as_in_our_notes() -> None:
    prof = cnnlab.profile("alexnet")
    conv1 = next(r for r in prof.rows if r.label == "conv1")
    assert conv1.output_shape == (96, 55, 55)
    assert conv1.neurons == 290_400
    assert conv1.params == 34_944
    assert conv1.macs == 290_400 * 11 * 11 * 3
    assert conv1.connections == 105_705_600
    assert (conv1.receptive_field, conv1.stride) == (11, 4)
    assert prof.notes == ()  # 227 tiles every window
    assert [r.label for r in prof.rows if r.label] == [
        "conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"
    ]  # fmt: skip
    # The paper's "650,000 neurons" are the outputs of its weighted layers.
    assert prof.neurons == 290_400 + 186_624 + 64_896 + 64_896 + 43_264 + 4096 + 4096 + 1000


def test_alexnet_at_224_says_why_227() -> None:
    prof = cnnlab.profile("alexnet", 224)
    assert any("(224 - 11) / 4 + 1 = 54.25 is not whole" in n for n in prof.notes)
    assert any("227x227" in n for n in prof.notes)


def test_too_small_names_the_smallest_that_works() -> None:
    with pytest.raises(InputSizeError, match=r"smallest input that works is (\d+)x\1") as info:
        cnnlab.profile("alexnet", 32)
    smallest = int(str(info.value).rsplit("is ", 1)[1].split("x")[0])
    cnnlab.profile("alexnet", smallest)  # works
    with pytest.raises(InputSizeError):
        cnnlab.profile("alexnet", smallest - 1)


def test_receptive_field_of_a_known_stack() -> None:
    # Three 3x3 convs see 7x7 (VGG's argument, section 2.3); a 2x2/2 pool doubles the stride.
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
        nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1),
    )  # fmt: skip
    prof = cnnlab.profile(model, 16)
    rf = [(r.receptive_field, r.stride) for r in prof.rows]
    assert rf == [(3, 1), (3, 1), (5, 1), (6, 2), (10, 2), (10 + 7 * 2, 16)]


def test_residual_add_takes_the_wider_branch() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 5, padding=2)
            self.fc = nn.Linear(3 * 8 * 8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x) + x
            return self.fc(torch.flatten(y, 1))

    prof = cnnlab.profile(Block(), 8)
    assert prof.rows[0].receptive_field == 5
    assert prof.rows[1].receptive_field == 5 + 7  # the fc sees the whole 8x8 map


@pytest.mark.parametrize("name", ["resnet18", "googlenet", "vgg11", "resnet20"])
def test_macs_agree_with_torch_flop_counter(name: str) -> None:
    card = cnnlab.model_card(name)
    torch.manual_seed(0)
    model = cnnlab.create_model(name).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, card.input_size, card.input_size))
    assert counter.get_total_flops() == 2 * cnnlab.profile(model, card.input_size).macs


def test_grouped_convolution_halves_the_work() -> None:
    # AlexNet's two-GPU layout: conv2, conv4, conv5 see only their own half of the maps.
    def second_row(groups: int) -> LayerRow:
        model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, groups=groups))
        return cnnlab.profile(model, 10).rows[1]

    dense, grouped = second_row(1), second_row(2)
    assert grouped.macs * 2 == dense.macs == 8 * 8 * 8 * 8 * 9
    assert grouped.params * 2 - 8 == dense.params
    assert grouped.connections == grouped.macs + 8 * 8 * 8


def test_smallest_input_size_of_a_pooling_stack() -> None:
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.MaxPool2d(2), nn.Conv2d(2, 2, 3))
    # 3x3 conv -> n-2, 2x2 pool -> (n-2)//2, 3x3 conv needs >= 3: n >= 8
    assert smallest_input_size(model) == 8


def test_json_round_trip() -> None:
    import json

    data = json.loads(cnnlab.profile("resnet20").to_json())
    assert data["params"] == 269_722
    assert data["rows"][0]["output_shape"] == [16, 32, 32]


def test_asymmetric_kernels_and_input_channels() -> None:
    # A 1x3 then a 3x1 conv (Szegedy et al. 2015, Fig. 3) on 8 maps: the windows read as
    # written; the receptive field, counted along the vertical axis, is 3 only after the 3x1.
    model = nn.Sequential(
        nn.Conv2d(8, 8, (1, 3), padding=(0, 1), bias=False),
        nn.Conv2d(8, 8, (3, 1), padding=(1, 0), bias=False),
    )
    prof = cnnlab.profile(model, 10, input_channels=8)
    assert [r.window for r in prof.rows] == ["1x3/1", "3x1/1"]
    assert [r.receptive_field for r in prof.rows] == [1, 3]
    assert prof.params == 2 * 3 * 8 * 8
    assert prof.macs == 2 * 10 * 10 * 3 * 8 * 8
    with pytest.raises(InputSizeError, match="smallest input that works is 3x3"):
        cnnlab.profile(nn.Conv2d(8, 8, 3), 2, input_channels=8)
