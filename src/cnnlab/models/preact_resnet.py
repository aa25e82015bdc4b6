"""Pre-activation residual networks (He et al. 2016, "Identity Mappings in Deep Residual
Networks", arXiv:1603.05027).

The full pre-activation unit (Fig. 4(e)): batch norm and ReLU come before each conv, nothing
follows the addition, so the shortcut path is a pure identity from unit to unit:
x_{l+1} = x_l + F(relu(bn(x_l))). The networks are those of He et al. 2015 with this unit.

CIFAR-10 (32x32 input; a 3x3 stem of 16 filters, three stages on 32, 16, 8 pixel maps):

    model              unit        blocks/stage  out widths     params       MACs           Table 3
    preact_resnet110   basic       18            16, 32, 64      1,727,962     252,887,680  6.37
    preact_resnet164   bottleneck  18            64, 128, 256    1,703,258     244,500,992  5.46
    preact_resnet1001  bottleneck  111           64, 128, 256   10,327,706   1,487,849,984  4.92

CIFAR-10 test errors (%); the cards also hold Table 4's CIFAR-100 results and the mini-batch
64 run of ResNet-1001. Bottleneck widths are 16, 32, 64 inside, 4x out: the appendix replaces
ResNet-110's [3x3, 16] x 2 by [1x1, 16][3x3, 16][1x1, 64]; depth 9n + 2. The paper's 1.7M
for ResNet-164 is ours rounded; its 10.2M for ResNet-1001 counts the conv and fc weights
(10,178,490) without the batch-norm parameters.

ImageNet (224x224 input; the stem, stages and widths of He et al. 2015, Table 1):

    model              blocks/stage   params       MACs             top-1 / top-5 (Table 5)
    preact_resnet18    2, 2, 2, 2     11,687,720    1,814,073,344
    preact_resnet34    3, 4, 6, 3     21,795,880    3,663,761,408
    preact_resnet50    3, 4, 6, 3     25,549,352    3,857,973,248
    preact_resnet101   3, 4, 23, 3    44,541,480    7,570,194,432
    preact_resnet152   3, 8, 36, 3    60,185,128   11,282,415,616   21.1 / 5.5
    preact_resnet200   3, 24, 36, 3   64,666,152   14,776,270,848   20.7 / 5.3

(ResNet-200 "has 16 more 3-layer bottleneck Residual Units than ResNet-152, which are added
on the feature map of 28x28". The paper reports ImageNet results for 152 and 200 only, on a
single 320x320 crop from nets trained on 224x224 crops with scale augmentation.)

Where the paper's appendix fixes the details, we follow it:
- "For the first Residual Unit (that follows a stand-alone convolutional layer, conv1), we
  adopt the first activation right after conv1 and before splitting into two paths": the stem
  is conv1, bn1, relu (then the max pool on ImageNet) and the first unit has no
  pre-activation of its own.
- "for the last Residual Unit ... we adopt an extra activation right after its element-wise
  addition": `final_bn` and a ReLU before the average pooling.
- "For the bottleneck ResNets, when reducing the feature map size we use projection
  shortcuts ... and when pre-activation is used, these projection shortcuts are also with
  pre-activation": where shapes change, the shortcut takes the pre-activated input. The
  projection is a 1x1 conv alone (no batch norm), as in the authors' code (resnet-1k-layers).

Choices the paper leaves open (deviations, if any): the basic-block CIFAR net uses option A
shortcuts, as the ResNet-110 it is compared with (He et al. 2015, section 4.2); the ImageNet
nets use option B (projections where shapes change). The bottleneck stride is on the first
1x1 conv, as in He et al. 2015 and the authors' CIFAR code (torchvision's "v1.5" puts it on
the 3x3). The fc layer keeps PyTorch's default init.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from cnnlab.models.layers import IdentityShortcut, conv1x1, conv3x3, init_he, make_shortcut
from cnnlab.models.registry import Reported, register_model

__all__ = [
    "PreActBasicBlock",
    "PreActBottleneck",
    "PreActCifarResNet",
    "PreActResNet",
    "preact_resnet18",
    "preact_resnet34",
    "preact_resnet50",
    "preact_resnet101",
    "preact_resnet152",
    "preact_resnet200",
    "preact_resnet110",
    "preact_resnet164",
    "preact_resnet1001",
]


class PreActBasicBlock(nn.Module):
    """Two BN-ReLU-3x3 conv steps added to the shortcut, no activation after. Fig. 4(e)."""

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        width: int,
        stride: int = 1,
        shortcut: str = "B",
        preactivate: bool = True,
    ) -> None:
        super().__init__()
        out_channels = width * self.expansion
        # None for the network's first unit: the stem has already applied BN-ReLU.
        self.bn1 = nn.BatchNorm2d(in_channels) if preactivate else None
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = conv3x3(in_channels, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, out_channels)
        self.downsample = make_shortcut(shortcut, in_channels, out_channels, stride, False)
        self.shortcut_preactivated = not isinstance(self.downsample, IdentityShortcut)

    def forward(self, x: Tensor) -> Tensor:
        preact = x if self.bn1 is None else self.relu(self.bn1(x))
        # shortcut branch: identity on x, or a projection / zero padding of the
        # pre-activated input where shapes change (appendix)
        shortcut = self.downsample(preact if self.shortcut_preactivated else x)
        # residual branch
        residual = self.conv1(preact)
        residual = self.conv2(self.relu(self.bn2(residual)))
        return residual + shortcut


class PreActBottleneck(nn.Module):
    """BN-ReLU-1x1 reduce, BN-ReLU-3x3, BN-ReLU-1x1 restore (4x), added to the shortcut."""

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        width: int,
        stride: int = 1,
        shortcut: str = "B",
        preactivate: bool = True,
    ) -> None:
        super().__init__()
        out_channels = width * self.expansion
        # None for the network's first unit: the stem has already applied BN-ReLU.
        self.bn1 = nn.BatchNorm2d(in_channels) if preactivate else None
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = conv1x1(in_channels, width, stride)  # stride on the first 1x1, as in [1]
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width)
        self.bn3 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_channels)
        self.downsample = make_shortcut(shortcut, in_channels, out_channels, stride, False)
        self.shortcut_preactivated = not isinstance(self.downsample, IdentityShortcut)

    def forward(self, x: Tensor) -> Tensor:
        preact = x if self.bn1 is None else self.relu(self.bn1(x))
        # shortcut branch: identity on x, or a projection of the pre-activated input where
        # shapes change (appendix)
        shortcut = self.downsample(preact if self.shortcut_preactivated else x)
        # residual branch
        residual = self.conv1(preact)
        residual = self.conv2(self.relu(self.bn2(residual)))
        residual = self.conv3(self.relu(self.bn3(residual)))
        return residual + shortcut


def _make_stage(
    block: type[PreActBasicBlock | PreActBottleneck],
    in_channels: int,
    width: int,
    num_blocks: int,
    stride: int,
    shortcut: str,
    first_stage: bool = False,
) -> nn.Sequential:
    # The network's first unit follows the stem's BN-ReLU and has no pre-activation itself.
    blocks = [block(in_channels, width, stride, shortcut, preactivate=not first_stage)]
    for _ in range(1, num_blocks):
        blocks.append(block(width * block.expansion, width, 1, shortcut))
    return nn.Sequential(*blocks)


class PreActCifarResNet(nn.Module):
    """The pre-activation CIFAR network: 3x3 stem, three stages, final BN-ReLU, GAP, fc.

    Args:
        block: PreActBasicBlock (6n + 2 layers) or PreActBottleneck (9n + 2 layers).
        n: blocks per stage.
        num_classes: outputs of the final linear layer.
        shortcut: "A" (zero padding) or "B" (projection) where shapes change.
    """

    def __init__(
        self,
        block: type[PreActBasicBlock | PreActBottleneck],
        n: int,
        num_classes: int = 10,
        shortcut: str = "B",
    ) -> None:
        super().__init__()
        e = block.expansion
        self.conv1 = conv3x3(3, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _make_stage(block, 16, 16, n, 1, shortcut, first_stage=True)
        self.layer2 = _make_stage(block, 16 * e, 32, n, 2, shortcut)
        self.layer3 = _make_stage(block, 32 * e, 64, n, 2, shortcut)
        self.final_bn = nn.BatchNorm2d(64 * e)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64 * e, num_classes)
        init_he(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))  # N x 16 x 32 x 32
        x = self.layer1(x)  # N x 16 (basic) or 64 (bottleneck) x 32 x 32
        x = self.layer2(x)  # N x 32 or 128 x 16 x 16
        x = self.layer3(x)  # N x 64 or 256 x 8 x 8
        x = self.relu(self.final_bn(x))  # the last unit's extra activation (appendix)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


# He et al. 2015, Table 1, and He et al. 2016, section 5 for the 200-layer net.
IMAGENET_DEPTHS: dict[
    int, tuple[type[PreActBasicBlock | PreActBottleneck], tuple[int, int, int, int]]
] = {
    18: (PreActBasicBlock, (2, 2, 2, 2)),
    34: (PreActBasicBlock, (3, 4, 6, 3)),
    50: (PreActBottleneck, (3, 4, 6, 3)),
    101: (PreActBottleneck, (3, 4, 23, 3)),
    152: (PreActBottleneck, (3, 8, 36, 3)),
    200: (PreActBottleneck, (3, 24, 36, 3)),
}


class PreActResNet(nn.Module):
    """The pre-activation ImageNet network: the 7x7 stem and four stages of Table 1 of He et al.
    2015, then a final BN-ReLU, GAP and fc. Projection shortcuts where shapes change.

    Args:
        block: PreActBasicBlock or PreActBottleneck.
        depths: blocks in each of the four stages.
        num_classes: outputs of the final linear layer.
    """

    def __init__(
        self,
        block: type[PreActBasicBlock | PreActBottleneck],
        depths: tuple[int, int, int, int],
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        e = block.expansion
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = _make_stage(block, 64, 64, depths[0], 1, "B", first_stage=True)
        self.layer2 = _make_stage(block, 64 * e, 128, depths[1], 2, "B")
        self.layer3 = _make_stage(block, 128 * e, 256, depths[2], 2, "B")
        self.layer4 = _make_stage(block, 256 * e, 512, depths[3], 2, "B")
        self.final_bn = nn.BatchNorm2d(512 * e)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * e, num_classes)
        init_he(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))  # N x 64 x 112 x 112
        x = self.maxpool(x)  # N x 64 x 56 x 56
        x = self.layer1(x)  # N x 64 (basic) or 256 (bottleneck) x 56 x 56
        x = self.layer2(x)  # N x 128 or 512 x 28 x 28
        x = self.layer3(x)  # N x 256 or 1024 x 14 x 14
        x = self.layer4(x)  # N x 512 or 2048 x 7 x 7
        x = self.relu(self.final_bn(x))  # the last unit's extra activation (appendix)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


PAPER = "He et al. 2016, arXiv:1603.05027"
C10 = "CIFAR-10 test error (%)"
C100 = "CIFAR-100 test error (%)"
TOP1 = "ImageNet top-1 val error (%)"
TOP5 = "ImageNet top-5 val error (%)"
CROP_320 = "Table 5 (single 320x320 crop, scale augmentation)"
NO_IMAGENET = "The paper reports ImageNet results for 152 and 200 layers only (Table 5)."


@register_model(
    "preact_resnet110",
    family="preact-resnet-cifar",
    paper=PAPER,
    input_size=32,
    num_classes=10,
    params=1_727_962,
    macs=252_887_680,
    reported=(Reported(C10, 6.37, "Table 3"),),
)
def preact_resnet110(num_classes: int = 10) -> PreActCifarResNet:
    return PreActCifarResNet(PreActBasicBlock, 18, num_classes=num_classes, shortcut="A")


@register_model(
    "preact_resnet164",
    family="preact-resnet-cifar",
    paper=PAPER,
    input_size=32,
    num_classes=10,
    params=1_703_258,
    macs=244_500_992,
    reported=(
        Reported(C10, 5.46, "Tables 3 and 4"),
        Reported(C100, 24.33, "Tables 3 and 4 (a 100-class model)"),
    ),
)
def preact_resnet164(num_classes: int = 10) -> PreActCifarResNet:
    return PreActCifarResNet(PreActBottleneck, 18, num_classes=num_classes, shortcut="B")


@register_model(
    "preact_resnet1001",
    family="preact-resnet-cifar",
    paper=PAPER,
    input_size=32,
    num_classes=10,
    params=10_327_706,
    macs=1_487_849_984,
    reported=(
        Reported(C10, 4.92, "Table 3; Table 4: median of 5 runs, mean 4.89 +- 0.14"),
        Reported(C10, 4.62, "Table 4 (mini-batch 64): median of 5 runs, mean 4.69 +- 0.20"),
        Reported(C100, 22.71, "Tables 3 and 4 (a 100-class model)"),
    ),
)
def preact_resnet1001(num_classes: int = 10) -> PreActCifarResNet:
    return PreActCifarResNet(PreActBottleneck, 111, num_classes=num_classes, shortcut="B")


def _imagenet_card(
    name: str, params: int, macs: int, reported: tuple[Reported, ...] = ()
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """register_model with what all the ImageNet pre-activation cards share."""
    return register_model(
        name,
        family="preact-resnet",
        paper=PAPER,
        input_size=224,
        params=params,
        macs=macs,
        reported=reported,
        notes="" if reported else NO_IMAGENET,
    )


@_imagenet_card("preact_resnet18", 11_687_720, 1_814_073_344)
def preact_resnet18(num_classes: int = 1000) -> PreActResNet:
    return PreActResNet(*IMAGENET_DEPTHS[18], num_classes=num_classes)


@_imagenet_card("preact_resnet34", 21_795_880, 3_663_761_408)
def preact_resnet34(num_classes: int = 1000) -> PreActResNet:
    return PreActResNet(*IMAGENET_DEPTHS[34], num_classes=num_classes)


@_imagenet_card("preact_resnet50", 25_549_352, 3_857_973_248)
def preact_resnet50(num_classes: int = 1000) -> PreActResNet:
    return PreActResNet(*IMAGENET_DEPTHS[50], num_classes=num_classes)


@_imagenet_card("preact_resnet101", 44_541_480, 7_570_194_432)
def preact_resnet101(num_classes: int = 1000) -> PreActResNet:
    return PreActResNet(*IMAGENET_DEPTHS[101], num_classes=num_classes)


@_imagenet_card(
    "preact_resnet152",
    60_185_128,
    11_282_415_616,
    (Reported(TOP1, 21.1, CROP_320), Reported(TOP5, 5.5, CROP_320)),
)
def preact_resnet152(num_classes: int = 1000) -> PreActResNet:
    return PreActResNet(*IMAGENET_DEPTHS[152], num_classes=num_classes)


@_imagenet_card(
    "preact_resnet200",
    64_666_152,
    14_776_270_848,
    (
        Reported(TOP1, 20.7, CROP_320),
        Reported(TOP5, 5.3, CROP_320),
        Reported(TOP1, 20.1, "Table 5 (single 320x320 crop, scale and aspect ratio aug.)"),
        Reported(TOP5, 4.8, "Table 5 (single 320x320 crop, scale and aspect ratio aug.)"),
    ),
)
def preact_resnet200(num_classes: int = 1000) -> PreActResNet:
    return PreActResNet(*IMAGENET_DEPTHS[200], num_classes=num_classes)
