"""Deep residual networks for CIFAR-10 (He et al. 2015, arXiv:1512.03385, section 4.2).

A 3x3 stem of 16 filters, three stages of n basic blocks (widths 16, 32, 64 on 32, 16, 8 pixel
maps; the first conv of stages 2 and 3 has stride 2), global average pooling and a linear
layer: 6n + 2 weighted layers, 3n shortcuts. 32x32 input.

    model       n     params       MACs            paper error (Table 6)
    resnet20    3        269,722      40,551,040   8.75
    resnet32    5        464,154      68,862,592   7.51
    resnet44    7        658,586      97,174,144   7.17
    resnet56    9        853,018     125,485,696   6.97
    resnet110   18     1,727,962     252,887,680   6.43 (best of 5 runs)
    resnet1202  200   19,421,274   2,829,238,912   7.93
    resnet164   18     1,704,154     244,500,992   5.93 (He et al. 2016, Table 3; bottleneck)

Parameters for 10 classes, with option A; MACs (multiply-adds of convs and fc) for one 32x32
image. The paper's parameter counts (0.27M, 0.46M, 0.66M, 0.85M, 1.7M, 19.4M) are these, rounded.
For ResNet-110 Table 6 gives the best of 5 runs and, in brackets, their mean 6.61 +- 0.16.
The plain nets `plain20` .. `plain110` are the same stacks without shortcuts; the paper shows
them in Fig. 6 (left) as training curves only, so their cards report no number.

Options: `shortcut="A"` (default: "On this dataset we use identity shortcuts in all cases
(i.e., option A)", so residual and plain nets have the same parameters) or "B" (projections
where shapes change, the ImageNet default; not a CIFAR experiment of the paper).
He et al. 2016's ablations (arXiv:1603.05027; see `cnnlab.models.identity_mappings`):
`shortcut_variant` (Fig. 2, Table 1: "identity" by default, "constant-scaling",
"exclusive-gating", "shortcut-only-gating", "conv1x1", "dropout"; `gate_bias` for the gates)
on the basic-block nets, and `unit` (Fig. 4, Table 2: "original" by default,
"bn-after-addition", "relu-before-addition", "relu-preact", "full-preact") on all of them,
resnet164 included. `cnnlab models --options resnet110` lists them with their parameters.

Deviations from the paper: none by default. The blocks are the ImageNet `BasicBlock` of
`cnnlab.models.resnet`; the fc layer keeps PyTorch's default init.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from cnnlab.models import identity_mappings as im
from cnnlab.models.layers import SHORTCUT_OPTIONS, conv3x3, init_he
from cnnlab.models.preact_resnet import PreActBasicBlock, PreActBottleneck, PreActCifarResNet
from cnnlab.models.registry import ModelOption, Reported, check_choice, register_model
from cnnlab.models.resnet import BasicBlock, Bottleneck, make_stage

__all__ = [
    "CIFAR_SHORTCUTS",
    "CifarResNet",
    "cifar_resnet",
    "plain20",
    "plain32",
    "plain44",
    "plain56",
    "plain110",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet164",
    "resnet1202",
]

CIFAR_SHORTCUTS = ("A", "B")
STAGE_WIDTHS = (16, 32, 64)


class CifarResNet(nn.Module):
    """The 6n+2-layer CIFAR-10 network of section 4.2; `shortcut=None` gives the plain net.

    With `block=Bottleneck` it is the 9n+2-layer bottleneck network of He et al. 2016
    (arXiv:1603.05027, section 4, "original" units): widths 16, 32, 64 inside the blocks and
    64, 128, 256 at their outputs.

    Args:
        n: blocks per stage.
        num_classes: outputs of the final linear layer.
        shortcut: "A" or "B", "C" (a projection on every shortcut), or None for a plain
            network.
        block: BasicBlock (He et al. 2015) or Bottleneck (He et al. 2016's ResNet-164), or
            one of their variants in `cnnlab.models.identity_mappings`.
        final_relu: a ReLU after the last unit, for ReLU-only pre-activation units (He et al.
            2016, appendix: "an extra activation right after its element-wise addition").
    """

    def __init__(
        self,
        n: int,
        num_classes: int = 10,
        shortcut: str | None = "A",
        block: type[BasicBlock | Bottleneck] = BasicBlock,
        final_relu: bool = False,
    ) -> None:
        super().__init__()
        if shortcut is not None:
            check_choice("shortcut", shortcut, SHORTCUT_OPTIONS)
        e = block.expansion
        self.conv1 = conv3x3(3, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = make_stage(block, 16, 16, n, 1, shortcut)
        self.layer2 = make_stage(block, 16 * e, 32, n, 2, shortcut)
        self.layer3 = make_stage(block, 32 * e, 64, n, 2, shortcut)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64 * e, num_classes)
        self.final_relu = final_relu
        init_he(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))  # N x 16 x 32 x 32
        x = self.layer1(x)  # N x 16e x 32 x 32 (e = block.expansion: 1, or 4 for Bottleneck)
        x = self.layer2(x)  # N x 32e x 16 x 16
        x = self.layer3(x)  # N x 64e x 8 x 8
        if self.final_relu:
            x = self.relu(x)  # the last pre-activation unit's extra activation
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def cifar_resnet(
    n: int,
    num_classes: int = 10,
    shortcut: str = "A",
    shortcut_variant: str = "identity",
    unit: str = "original",
    gate_bias: float | None = None,
    bottleneck: bool = False,
) -> nn.Module:
    """A CIFAR ResNet of n units per stage with the shortcut or unit of He et al. 2016.

    Args:
        n: units per stage (6n + 2 layers, or 9n + 2 with bottleneck units).
        num_classes: outputs of the final linear layer.
        shortcut: "A" or "B", where shapes change.
        shortcut_variant: h(x) of Fig. 2 on every shortcut (basic units only).
        unit: the order of BN and ReLU, Fig. 4.
        gate_bias: the gates' initial bias b_g (the gated shortcut variants only; default -6).
        bottleneck: bottleneck units (ResNet-164) instead of basic ones.

    Raises:
        ValueError: a value not valid, naming the valid ones; a shortcut variant with another
            unit than the original (the paper studies them apart: Tables 1 and 2); a shortcut
            variant on bottleneck units; gate_bias without gates.
    """
    check_choice("shortcut", shortcut, CIFAR_SHORTCUTS)  # None would silently build a plain net
    check_choice("shortcut_variant", shortcut_variant, im.SHORTCUT_VARIANTS)
    check_choice("unit", unit, im.UNITS)
    if shortcut_variant != "identity" and unit != "original":
        raise ValueError(
            f"shortcut_variant={shortcut_variant!r} and unit={unit!r}: the paper varies the "
            "shortcut with the original unit (Table 1) and the unit with identity shortcuts "
            "(Table 2); set one of them"
        )
    if shortcut_variant != "identity" and bottleneck:
        raise ValueError(
            f"shortcut_variant={shortcut_variant!r} is for the basic-block ResNets (He et al. "
            "2016, Table 1: ResNet-110); the bottleneck net takes `unit` only"
        )
    if gate_bias is not None and shortcut_variant not in im.GATED:
        raise ValueError(
            f"gate_bias is the initial bias of the gates of shortcut_variant="
            f"{' or '.join(repr(v) for v in im.GATED)}, not of {shortcut_variant!r}"
        )
    if unit == "full-preact":  # Fig. 4(e): the network of cnnlab.models.preact_resnet
        preact = PreActBottleneck if bottleneck else PreActBasicBlock
        return PreActCifarResNet(preact, n, num_classes=num_classes, shortcut=shortcut)
    block, forced = im.shortcut_variant_block(shortcut_variant)
    net = CifarResNet(
        n,
        num_classes=num_classes,
        shortcut=forced or shortcut,
        block=im.unit_block(unit, Bottleneck if bottleneck else block),
        final_relu=unit == "relu-preact",
    )
    if shortcut_variant in im.GATED:
        im.init_gates(net, im.DEFAULT_GATE_BIAS if gate_bias is None else gate_bias)
    return net


PAPER = "He et al. 2015, arXiv:1512.03385"
ERROR = "CIFAR-10 test error (%)"
PLAIN_NOTE = "Fig. 6 (left) shows this plain net's curves; the paper gives no table figure."


SHORTCUT_OPTION = ModelOption(
    "shortcut", CIFAR_SHORTCUTS, f"{PAPER}, section 3.3 (option A on CIFAR, section 4.2)"
)
BASIC_OPTIONS = (SHORTCUT_OPTION, im.SHORTCUT_VARIANT_OPTION, im.GATE_BIAS_OPTION, im.UNIT_OPTION)


def _card(
    name: str, params: int, macs: int, error: float | None, source: str = "Table 6"
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """register_model with what all the CIFAR cards share."""
    plain = name.startswith("plain")
    return register_model(
        name,
        family="plain-cifar" if plain else "resnet-cifar",
        paper=PAPER,
        input_size=32,
        num_classes=10,
        params=params,
        macs=macs,
        reported=() if error is None else (Reported(ERROR, error, source),),
        notes=PLAIN_NOTE if plain else "",
        options=() if plain else BASIC_OPTIONS,
    )


@_card("resnet20", 269_722, 40_551_040, 8.75)
def resnet20(
    num_classes: int = 10,
    shortcut: str = "A",
    shortcut_variant: str = "identity",
    gate_bias: float | None = None,
    unit: str = "original",
) -> nn.Module:
    return cifar_resnet(3, num_classes, shortcut, shortcut_variant, unit, gate_bias)


@_card("resnet32", 464_154, 68_862_592, 7.51)
def resnet32(
    num_classes: int = 10,
    shortcut: str = "A",
    shortcut_variant: str = "identity",
    gate_bias: float | None = None,
    unit: str = "original",
) -> nn.Module:
    return cifar_resnet(5, num_classes, shortcut, shortcut_variant, unit, gate_bias)


@_card("resnet44", 658_586, 97_174_144, 7.17)
def resnet44(
    num_classes: int = 10,
    shortcut: str = "A",
    shortcut_variant: str = "identity",
    gate_bias: float | None = None,
    unit: str = "original",
) -> nn.Module:
    return cifar_resnet(7, num_classes, shortcut, shortcut_variant, unit, gate_bias)


@_card("resnet56", 853_018, 125_485_696, 6.97)
def resnet56(
    num_classes: int = 10,
    shortcut: str = "A",
    shortcut_variant: str = "identity",
    gate_bias: float | None = None,
    unit: str = "original",
) -> nn.Module:
    return cifar_resnet(9, num_classes, shortcut, shortcut_variant, unit, gate_bias)


@_card("resnet110", 1_727_962, 252_887_680, 6.43, "Table 6 (best of 5 runs; mean 6.61 +- 0.16)")
def resnet110(
    num_classes: int = 10,
    shortcut: str = "A",
    shortcut_variant: str = "identity",
    gate_bias: float | None = None,
    unit: str = "original",
) -> nn.Module:
    return cifar_resnet(18, num_classes, shortcut, shortcut_variant, unit, gate_bias)


@_card("resnet1202", 19_421_274, 2_829_238_912, 7.93)
def resnet1202(
    num_classes: int = 10,
    shortcut: str = "A",
    shortcut_variant: str = "identity",
    gate_bias: float | None = None,
    unit: str = "original",
) -> nn.Module:
    return cifar_resnet(200, num_classes, shortcut, shortcut_variant, unit, gate_bias)


@_card("plain20", 269_722, 40_551_040, None)
def plain20(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(3, num_classes=num_classes, shortcut=None)


@_card("plain32", 464_154, 68_862_592, None)
def plain32(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(5, num_classes=num_classes, shortcut=None)


@_card("plain44", 658_586, 97_174_144, None)
def plain44(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(7, num_classes=num_classes, shortcut=None)


@_card("plain56", 853_018, 125_485_696, None)
def plain56(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(9, num_classes=num_classes, shortcut=None)


@_card("plain110", 1_727_962, 252_887_680, None)
def plain110(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(18, num_classes=num_classes, shortcut=None)


# He et al. 2016 (arXiv:1603.05027), Table 3: the original (post-activation) bottleneck unit,
# the baseline of `preact_resnet164`. Projection shortcuts (option B) where shapes change, as
# in that paper's bottleneck networks; the stride sits on the first 1x1 conv, as in our paper
# layout of the ImageNet Bottleneck and in `preact_resnet164`.
@register_model(
    "resnet164",
    family="resnet-cifar",
    paper="He et al. 2016, arXiv:1603.05027",
    input_size=32,
    num_classes=10,
    params=1_704_154,  # the paper's 1.7M
    macs=244_500_992,
    reported=(Reported(ERROR, 5.93, "Table 3 (original unit)"),),
    notes="9n+2 layers with n=18 bottleneck blocks per stage; the original units of "
    "He et al. 2015 (BN and ReLU after each conv, ReLU after the addition).",
    options=(
        ModelOption("shortcut", ("B", "A"), "He et al. 2016, appendix (projections, B)"),
        im.UNIT_OPTION,
    ),
)
def resnet164(num_classes: int = 10, shortcut: str = "B", unit: str = "original") -> nn.Module:
    return cifar_resnet(18, num_classes, shortcut, unit=unit, bottleneck=True)
