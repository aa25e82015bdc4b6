"""Deep residual networks for ImageNet (He et al. 2015, arXiv:1512.03385, Table 1).

A 7x7 stem and a 3x3 max pool, four stages of blocks (conv2_x .. conv5_x, widths 64, 128,
256, 512 on 56, 28, 14, 7 pixel maps), global average pooling and a 1000-way linear layer.
Basic blocks (two 3x3 convs, Fig. 5 left) for 18 and 34 layers; bottleneck blocks (1x1, 3x3,
1x1 with 4x the width out, Fig. 5 right) for 50, 101 and 152. The plain networks are the same
stacks without shortcuts (Fig. 3 middle).

    model      blocks per stage   params       MACs            Table 1   top-1 / top-5 error
    resnet18   2, 2, 2, 2         11,689,512   1,814,073,344   1.8G      27.88 (Table 2, A)
    resnet34   3, 4, 6, 3         21,797,672   3,663,761,408   3.6G      24.52 / 7.46
    resnet50   3, 4, 6, 3         25,557,032   3,857,973,248   3.8G      22.85 / 6.71
    resnet101  3, 4, 23, 3        44,549,160   7,570,194,432   7.6G      21.75 / 6.05
    resnet152  3, 8, 36, 3        60,192,808   11,282,415,616  11.3G     21.43 / 5.71
    plain18    2, 2, 2, 2         11,515,688   1,794,805,760             27.94 (Table 2)
    plain34    3, 4, 6, 3         21,623,848   3,644,493,824             28.54 / 10.02
    plain50    3, 4, 6, 3         22,780,456   3,498,311,680
    plain101   3, 4, 23, 3        41,772,584   7,210,532,864
    plain152   3, 8, 36, 3        57,416,232   10,922,754,048

Errors are ImageNet validation, 10-crop testing (Tables 2 and 3): option A shortcuts for
ResNet-18 (Table 2), option B for the rest (Table 3); the cards also hold Table 4 (single
model, multi-scale) and the option A/C rows of ResNet-34. The paper reports plain nets of 18
and 34 layers only; plain50/101/152 exist for completeness (footnote 4 says the bottleneck
plain nets degrade too).

Parameters and MACs are for the default option B. MACs are multiply-adds of the convs and
the fc layer for one 224x224 image, the convention of Table 1's "FLOPs". Table 1 rounds
loosely: its 3.6G for 34 layers is the parameter-free net (3.64G with option A or plain;
option B's three projections add 19M), and ResNet-50's 3.86G is printed 3.8G.

Options (section 3.3): `shortcut="A" | "B" | "C"` (B default, as for ResNet-50/101/152 in
the paper); see `cnnlab.models.layers`.

Layouts: `layout="paper"` (default) is the published network: the bottleneck's stride 2 sits
on its first 1x1 conv ("Downsampling is performed by conv3_1, conv4_1, and conv5_1 with a
stride of 2", Table 1 caption). `layout="torchvision"` moves it to the 3x3 conv ("ResNet
v1.5"), which costs more multiply-adds (ResNet-50: 4.09G against 3.86G) and is what
torchvision ships: its state_dict loads strictly into ours and gives the same logits. Only
option B has a torchvision twin. Basic-block nets are the same in both layouts.

Deviations from the paper: none by default. The fc layer keeps PyTorch's default init (the
paper gives He init for the convs only).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cnnlab.models.layers import SHORTCUT_OPTIONS, conv1x1, conv3x3, init_he, make_shortcut
from cnnlab.models.registry import Reported, check_choice, register_model

__all__ = [
    "IMAGENET_DEPTHS",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "make_stage",
    "zero_init_residual",
    "plain18",
    "plain34",
    "plain50",
    "plain101",
    "plain152",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
]

LAYOUTS = ("paper", "torchvision")


class BasicBlock(nn.Module):
    """Two 3x3 convs and a shortcut: relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)). Fig. 2.

    `layout` is accepted so that a stage builds either block; both layouts are the same here.
    """

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        width: int,
        stride: int = 1,
        shortcut: str | None = "B",
        layout: str = "paper",
    ) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = conv3x3(in_channels, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(width, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        # The shortcut keeps torchvision's attribute name. None: a plain block, no shortcut.
        self.downsample = (
            None if shortcut is None else make_shortcut(shortcut, in_channels, out_channels, stride)
        )

    def forward(self, x: Tensor) -> Tensor:
        residual = self.relu(self.bn1(self.conv1(x)))
        residual = self.bn2(self.conv2(residual))
        if self.downsample is None:  # plain network (Fig. 3 middle)
            return self.relu(residual)
        return self.relu(residual + self.downsample(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 restore to 4x the width, and a shortcut. Fig. 5 right.

    The stride is on conv1 (the first 1x1) in the paper layout, on conv2 (the 3x3) in
    torchvision's.
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        width: int,
        stride: int = 1,
        shortcut: str | None = "B",
        layout: str = "paper",
    ) -> None:
        super().__init__()
        out_channels = width * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if layout == "paper" else (1, stride)
        self.conv1 = conv1x1(in_channels, width, stride_1x1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride_3x3)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        # The shortcut keeps torchvision's attribute name. None: a plain block, no shortcut.
        self.downsample = (
            None if shortcut is None else make_shortcut(shortcut, in_channels, out_channels, stride)
        )

    def forward(self, x: Tensor) -> Tensor:
        residual = self.relu(self.bn1(self.conv1(x)))
        residual = self.relu(self.bn2(self.conv2(residual)))
        residual = self.bn3(self.conv3(residual))
        if self.downsample is None:  # plain network
            return self.relu(residual)
        return self.relu(residual + self.downsample(x))


def make_stage(
    block: type[BasicBlock | Bottleneck],
    in_channels: int,
    width: int,
    num_blocks: int,
    stride: int,
    shortcut: str | None,
    layout: str = "paper",
) -> nn.Sequential:
    """A stage of `num_blocks` blocks; the first one changes resolution and width."""
    blocks = [block(in_channels, width, stride, shortcut, layout)]
    for _ in range(1, num_blocks):
        blocks.append(block(width * block.expansion, width, 1, shortcut, layout))
    return nn.Sequential(*blocks)


def zero_init_residual(model: nn.Module) -> int:
    """Zero the scale of the last batch norm of every residual branch (Goyal et al. 2017).

    "For BN layers, the learnable scaling coefficient gamma is initialized to be 1, except for
    each residual block's last BN where gamma is initialized to be 0" (arXiv:1706.02677,
    section 5.1): every block then starts as its shortcut, and the network as a shallower one.
    An initialisation, not a change of the network. Applies to the papers' blocks (BasicBlock,
    Bottleneck) with a shortcut, the CIFAR and ImageNet ResNets; not to plain nets (no
    shortcut: a zeroed branch would carry nothing), nor to He et al. 2016's variants (their
    branches end elsewhere, or in a gate).

    Returns:
        how many batch norms were zeroed.

    Raises:
        ValueError: the model has no such block.
    """
    zeroed = 0
    for m in model.modules():
        if type(m) in (BasicBlock, Bottleneck) and m.downsample is not None:
            nn.init.zeros_((m.bn2 if isinstance(m, BasicBlock) else m.bn3).weight)
            zeroed += 1
    if not zeroed:
        raise ValueError(
            f"{type(model).__name__} has no residual block of He et al. 2015 (BasicBlock or "
            "Bottleneck with a shortcut) whose last batch norm could start at zero: "
            "zero_init_residual is for the ResNets, not plain nets or other units"
        )
    return zeroed


# He et al. 2015, Table 1: block type and blocks per stage, conv2_x .. conv5_x.
IMAGENET_DEPTHS: dict[int, tuple[type[BasicBlock | Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}
STAGE_WIDTHS = (64, 128, 256, 512)


class ResNet(nn.Module):
    """The ImageNet ResNet of Table 1; `shortcut=None` gives its plain twin (Fig. 3 middle).

    Args:
        block: BasicBlock or Bottleneck.
        depths: blocks in each of the four stages.
        num_classes: outputs of the final linear layer.
        shortcut: "A", "B" or "C" (section 3.3), or None for a plain network.
        layout: "paper" or "torchvision" (bottleneck stride on the 3x3; option B only).
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        depths: tuple[int, int, int, int],
        num_classes: int = 1000,
        shortcut: str | None = "B",
        layout: str = "paper",
    ) -> None:
        super().__init__()
        check_choice("layout", layout, LAYOUTS)
        if shortcut is not None:
            check_choice("shortcut", shortcut, SHORTCUT_OPTIONS)
        if layout == "torchvision" and shortcut != "B":
            raise ValueError(
                f"layout='torchvision' exists with shortcut='B' only (got shortcut={shortcut!r})"
            )
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        channels = 64
        stages = []
        for i, (width, num_blocks) in enumerate(zip(STAGE_WIDTHS, depths, strict=True)):
            stride = 1 if i == 0 else 2  # conv2_x: the max pool has already halved the maps
            stages.append(make_stage(block, channels, width, num_blocks, stride, shortcut, layout))
            channels = width * block.expansion
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(channels, num_classes)
        init_he(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))  # N x 64 x 112 x 112
        x = self.maxpool(x)  # N x 64 x 56 x 56
        x = self.layer1(x)  # conv2_x: N x 64 (basic) or 256 (bottleneck) x 56 x 56
        x = self.layer2(x)  # conv3_x: N x 128 or 512 x 28 x 28
        x = self.layer3(x)  # conv4_x: N x 256 or 1024 x 14 x 14
        x = self.layer4(x)  # conv5_x: N x 512 or 2048 x 7 x 7
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def _resnet(depth: int, num_classes: int, shortcut: str, layout: str) -> ResNet:
    check_choice("shortcut", shortcut, SHORTCUT_OPTIONS)  # None would silently build a plain net
    block, depths = IMAGENET_DEPTHS[depth]
    return ResNet(block, depths, num_classes=num_classes, shortcut=shortcut, layout=layout)


def _plain(depth: int, num_classes: int) -> ResNet:
    block, depths = IMAGENET_DEPTHS[depth]
    return ResNet(block, depths, num_classes=num_classes, shortcut=None)


PAPER = "He et al. 2015, arXiv:1512.03385"
TOP1 = "ImageNet top-1 val error (%)"
TOP5 = "ImageNet top-5 val error (%)"


@register_model(
    "resnet18",
    family="resnet",
    paper=PAPER,
    input_size=224,
    params=11_689_512,
    macs=1_814_073_344,
    reported=(Reported(TOP1, 27.88, "Table 2 (10-crop, option A)"),),
    layouts=LAYOUTS,
)
def resnet18(num_classes: int = 1000, shortcut: str = "B", layout: str = "paper") -> ResNet:
    return _resnet(18, num_classes, shortcut, layout)


@register_model(
    "resnet34",
    family="resnet",
    paper=PAPER,
    input_size=224,
    params=21_797_672,
    macs=3_663_761_408,
    reported=(
        Reported(TOP1, 24.52, "Table 3 (10-crop, option B)"),
        Reported(TOP5, 7.46, "Table 3 (10-crop, option B)"),
        Reported(TOP1, 21.84, "Table 4 (single model, multi-scale, option B)"),
        Reported(TOP5, 5.71, "Table 4 (single model, multi-scale, option B)"),
        Reported(TOP1, 25.03, "Tables 2 and 3 (10-crop, option A)"),
        Reported(TOP5, 7.76, "Table 3 (10-crop, option A)"),
        Reported(TOP1, 24.19, "Table 3 (10-crop, option C)"),
        Reported(TOP5, 7.40, "Table 3 (10-crop, option C)"),
        Reported(TOP1, 21.53, "Table 4 (single model, multi-scale, option C)"),
        Reported(TOP5, 5.60, "Table 4 (single model, multi-scale, option C)"),
    ),
    layouts=LAYOUTS,
)
def resnet34(num_classes: int = 1000, shortcut: str = "B", layout: str = "paper") -> ResNet:
    return _resnet(34, num_classes, shortcut, layout)


@register_model(
    "resnet50",
    family="resnet",
    paper=PAPER,
    input_size=224,
    params=25_557_032,
    macs=3_857_973_248,
    reported=(
        Reported(TOP1, 22.85, "Table 3 (10-crop)"),
        Reported(TOP5, 6.71, "Table 3 (10-crop)"),
        Reported(TOP1, 20.74, "Table 4 (single model, multi-scale)"),
        Reported(TOP5, 5.25, "Table 4 (single model, multi-scale)"),
    ),
    layouts=LAYOUTS,
)
def resnet50(num_classes: int = 1000, shortcut: str = "B", layout: str = "paper") -> ResNet:
    return _resnet(50, num_classes, shortcut, layout)


@register_model(
    "resnet101",
    family="resnet",
    paper=PAPER,
    input_size=224,
    params=44_549_160,
    macs=7_570_194_432,
    reported=(
        Reported(TOP1, 21.75, "Table 3 (10-crop)"),
        Reported(TOP5, 6.05, "Table 3 (10-crop)"),
        Reported(TOP1, 19.87, "Table 4 (single model, multi-scale)"),
        Reported(TOP5, 4.60, "Table 4 (single model, multi-scale)"),
    ),
    layouts=LAYOUTS,
)
def resnet101(num_classes: int = 1000, shortcut: str = "B", layout: str = "paper") -> ResNet:
    return _resnet(101, num_classes, shortcut, layout)


@register_model(
    "resnet152",
    family="resnet",
    paper=PAPER,
    input_size=224,
    params=60_192_808,
    macs=11_282_415_616,
    reported=(
        Reported(TOP1, 21.43, "Table 3 (10-crop)"),
        Reported(TOP5, 5.71, "Table 3 (10-crop)"),
        Reported(TOP1, 19.38, "Table 4 (single model, multi-scale)"),
        Reported(TOP5, 4.49, "Table 4 (single model, multi-scale)"),
    ),
    layouts=LAYOUTS,
)
def resnet152(num_classes: int = 1000, shortcut: str = "B", layout: str = "paper") -> ResNet:
    return _resnet(152, num_classes, shortcut, layout)


PLAIN_NOTE = "The paper reports plain nets of 18 and 34 layers only (Tables 2 and 3)."


@register_model(
    "plain18",
    family="plain",
    paper=PAPER,
    input_size=224,
    params=11_515_688,
    macs=1_794_805_760,
    reported=(Reported(TOP1, 27.94, "Table 2 (10-crop)"),),
)
def plain18(num_classes: int = 1000) -> ResNet:
    return _plain(18, num_classes)


@register_model(
    "plain34",
    family="plain",
    paper=PAPER,
    input_size=224,
    params=21_623_848,
    macs=3_644_493_824,
    reported=(
        Reported(TOP1, 28.54, "Tables 2 and 3 (10-crop)"),
        Reported(TOP5, 10.02, "Table 3 (10-crop)"),
    ),
)
def plain34(num_classes: int = 1000) -> ResNet:
    return _plain(34, num_classes)


@register_model(
    "plain50",
    family="plain",
    paper=PAPER,
    input_size=224,
    params=22_780_456,
    macs=3_498_311_680,
    notes=PLAIN_NOTE,
)
def plain50(num_classes: int = 1000) -> ResNet:
    return _plain(50, num_classes)


@register_model(
    "plain101",
    family="plain",
    paper=PAPER,
    input_size=224,
    params=41_772_584,
    macs=7_210_532_864,
    notes=PLAIN_NOTE,
)
def plain101(num_classes: int = 1000) -> ResNet:
    return _plain(101, num_classes)


@register_model(
    "plain152",
    family="plain",
    paper=PAPER,
    input_size=224,
    params=57_416_232,
    macs=10_922_754_048,
    notes=PLAIN_NOTE,
)
def plain152(num_classes: int = 1000) -> ResNet:
    return _plain(152, num_classes)
