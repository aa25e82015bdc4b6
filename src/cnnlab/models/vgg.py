"""VGG networks (Simonyan and Zisserman 2014, "Very Deep Convolutional Networks for
Large-Scale Image Recognition", arXiv:1409.1556v6, ICLR 2015; Table 1).

Five stages of 3x3 convolutions (stride 1, padding 1), each ending in a 2x2 max-pool of stride
2, on a 224 x 224 input (7 x 7 x 512 after the last stage), then fully connected layers of
4096, 4096 and num_classes units, dropout 0.5 after the first two. Configuration A-LRN adds
one local response normalisation after the first conv; C adds a 1x1 conv at the end of each of
the last three stages where D has a third 3x3 conv.

    model      config  weight layers  params       multiply-adds   paper error, top-1 / top-5
    vgg11      A       11             132,863,336   7,609,090,048   29.6 / 10.4
    vgg11_lrn  A-LRN   11             132,863,336   7,609,090,048   29.7 / 10.5
    vgg13      B       13             133,047,848  11,308,466,176   28.7 /  9.9
    vgg16_c    C       16             133,638,952  11,770,888,192   28.1 /  9.4
    vgg16      D       16             138,357,544  15,470,264,320   27.0 /  8.8
    vgg19      E       19             143,667,240  19,632,062,464   27.3 /  9.0

The errors are ILSVRC-2012 validation errors of Table 3 (single test scale) for a net trained
and tested at a fixed scale, S = Q = 256, the one setting in which all six were evaluated.
Table 2 gives the parameter counts, in millions: 133 (A, A-LRN), 133, 134, 138, 144.

`vgg11_bn`, `vgg13_bn`, `vgg16_bn`, `vgg19_bn` are configurations A, B, D, E with batch norm
after each conv, as torchvision has them (the paper predates batch norm; no results reported).

Deviations from the paper:
- An adaptive average pool to 7 x 7 (`avgpool`) before the classifier, which the paper does not
  have. At 224 the last map is already 7 x 7 and the pool is the identity, so at the paper's
  size the network is the paper's; at other sizes (>= 32) it lets the net run, as
  torchvision's does. The paper evaluates other sizes differently: it turns the fully connected
  layers into convolutions and averages the class score map (section 3.2, dense evaluation).
- Initialisation: Glorot and Bengio 2010 (uniform), biases 0; the paper trained A from
  N(0, 10^-2) and the deeper nets from A's weights, then notes (section 3.1) that Glorot's
  initialisation works without that pre-training.
- ReLUs are not in-place, so hooks see each layer's output unmodified.

layout="torchvision" (vgg11/13/16/19 and their _bn): the same network with torchvision's
initialisation (He-normal convs, N(0, 0.01) linear layers). The parameter names are
torchvision's in both layouts (`features.N`, `classifier.N`), so torchvision's weights load.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn

from cnnlab.models.alexnet import local_response_norm
from cnnlab.models.registry import Reported, check_choice, register_model

__all__ = [
    "CONFIGS",
    "VGG",
    "make_features",
    "vgg11",
    "vgg11_bn",
    "vgg11_lrn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg16_c",
    "vgg19",
    "vgg19_bn",
]

LAYOUTS = ("paper", "torchvision")

# Simonyan and Zisserman 2014, Table 1: one entry per column (configuration), one row per stage
# (the layers between two max-pools; every stage ends in a 2x2 max-pool of stride 2). Layers are
# written as in the paper: "conv<receptive field>-<channels>" (stride 1, padding that keeps the
# resolution), "LRN" for local response normalisation.
CONFIGS: dict[str, tuple[tuple[str, ...], ...]] = {
    "A": (
        ("conv3-64",),
        ("conv3-128",),
        ("conv3-256", "conv3-256"),
        ("conv3-512", "conv3-512"),
        ("conv3-512", "conv3-512"),
    ),
    "A-LRN": (
        ("conv3-64", "LRN"),
        ("conv3-128",),
        ("conv3-256", "conv3-256"),
        ("conv3-512", "conv3-512"),
        ("conv3-512", "conv3-512"),
    ),
    "B": (
        ("conv3-64", "conv3-64"),
        ("conv3-128", "conv3-128"),
        ("conv3-256", "conv3-256"),
        ("conv3-512", "conv3-512"),
        ("conv3-512", "conv3-512"),
    ),
    "C": (
        ("conv3-64", "conv3-64"),
        ("conv3-128", "conv3-128"),
        ("conv3-256", "conv3-256", "conv1-256"),
        ("conv3-512", "conv3-512", "conv1-512"),
        ("conv3-512", "conv3-512", "conv1-512"),
    ),
    "D": (
        ("conv3-64", "conv3-64"),
        ("conv3-128", "conv3-128"),
        ("conv3-256", "conv3-256", "conv3-256"),
        ("conv3-512", "conv3-512", "conv3-512"),
        ("conv3-512", "conv3-512", "conv3-512"),
    ),
    "E": (
        ("conv3-64", "conv3-64"),
        ("conv3-128", "conv3-128"),
        ("conv3-256", "conv3-256", "conv3-256", "conv3-256"),
        ("conv3-512", "conv3-512", "conv3-512", "conv3-512"),
        ("conv3-512", "conv3-512", "conv3-512", "conv3-512"),
    ),
}

_CONV = re.compile(r"conv(\d+)-(\d+)")


def make_features(stages: tuple[tuple[str, ...], ...], batch_norm: bool = False) -> nn.Sequential:
    """The convolutional part of a Table 1 column as one flat `nn.Sequential`.

    Each conv becomes conv, (batch norm,) ReLU, and each stage ends in a max-pool: the
    layer order and indices of torchvision's `make_layers`, so the parameter names match.

    Raises:
        ValueError: a layer that is neither "conv<k>-<channels>" nor "LRN".
    """
    layers: list[nn.Module] = []
    in_channels = 3
    for stage in stages:
        for layer in stage:
            if layer == "LRN":
                # Section 2.1: A-LRN's normalisation is that of Krizhevsky et al. 2012.
                layers.append(local_response_norm())
                continue
            match = _CONV.fullmatch(layer)
            if match is None:
                raise ValueError(f"unknown layer {layer!r}; expected 'conv<k>-<channels>' or 'LRN'")
            kernel, channels = int(match[1]), int(match[2])
            layers.append(nn.Conv2d(in_channels, channels, kernel, padding=kernel // 2))
            if batch_norm:
                layers.append(nn.BatchNorm2d(channels))
            layers.append(nn.ReLU())
            in_channels = channels
        layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """A Table 1 column: `features`, `avgpool`, fully connected `classifier` (torchvision's names).

    Args:
        config: a key of `CONFIGS` ("A", "A-LRN", "B", "C", "D", "E").
        num_classes: units of the last fully connected layer.
        batch_norm: batch norm after every conv (torchvision's _bn variants).
        layout: "paper" (Glorot init) or "torchvision" (torchvision's init); same layers.
    """

    def __init__(
        self,
        config: str,
        num_classes: int = 1000,
        batch_norm: bool = False,
        layout: str = "paper",
    ) -> None:
        super().__init__()
        check_choice("config", config, tuple(CONFIGS))
        check_choice("layout", layout, LAYOUTS)
        self.features = make_features(CONFIGS[config], batch_norm=batch_norm)
        # The identity at 224 (7 x 7 maps already); see the module docstring.
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        # Section 3.1: dropout (ratio 0.5) for the first two fully connected layers.
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(),
            nn.Dropout(p=0.5),
            nn.Linear(4096, 4096),
            nn.ReLU(),
            nn.Dropout(p=0.5),
            nn.Linear(4096, num_classes),
        )
        if layout == "paper":
            _init_glorot(self)
        else:
            _init_torchvision(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        # N x 512 x 7 x 7 at 224
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def _init_glorot(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


def _init_torchvision(model: nn.Module) -> None:
    # torchvision.models.VGG.__init__ with init_weights=True.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


_PAPER = "Simonyan & Zisserman 2014, arXiv:1409.1556"
_PAPER_BN = _PAPER + " (batch norm as torchvision)"
_TABLE3 = "Table 3 (S=256, Q=256)"
_BN_NOTES = "Not in the paper: batch norm after every conv, as torchvision's _bn variants."


def _reported(top1: float, top5: float) -> tuple[Reported, ...]:
    return (
        Reported("ImageNet top-1 val error (%)", top1, _TABLE3),
        Reported("ImageNet top-5 val error (%)", top5, _TABLE3),
    )


@register_model(
    "vgg11",
    family="vgg",
    paper=_PAPER,
    input_size=224,
    params=132_863_336,
    macs=7_609_090_048,
    reported=_reported(29.6, 10.4),
    layouts=LAYOUTS,
    notes="Configuration A.",
)
def vgg11(num_classes: int = 1000, layout: str = "paper") -> VGG:
    """Configuration A: 8 conv + 3 fully connected layers."""
    return VGG("A", num_classes=num_classes, layout=layout)


@register_model(
    "vgg11_lrn",
    family="vgg",
    paper=_PAPER,
    input_size=224,
    params=132_863_336,
    macs=7_609_090_048,
    reported=_reported(29.7, 10.5),
    notes="Configuration A-LRN: A with LRN after the first conv (no torchvision twin).",
)
def vgg11_lrn(num_classes: int = 1000) -> VGG:
    """Configuration A-LRN: A with local response normalisation after the first conv."""
    return VGG("A-LRN", num_classes=num_classes)


@register_model(
    "vgg13",
    family="vgg",
    paper=_PAPER,
    input_size=224,
    params=133_047_848,
    macs=11_308_466_176,
    reported=_reported(28.7, 9.9),
    layouts=LAYOUTS,
    notes="Configuration B.",
)
def vgg13(num_classes: int = 1000, layout: str = "paper") -> VGG:
    """Configuration B: 10 conv + 3 fully connected layers."""
    return VGG("B", num_classes=num_classes, layout=layout)


@register_model(
    "vgg16_c",
    family="vgg",
    paper=_PAPER,
    input_size=224,
    params=133_638_952,
    macs=11_770_888_192,
    reported=_reported(28.1, 9.4),
    notes="Configuration C: 1x1 convs end stages 3-5 (no torchvision twin).",
)
def vgg16_c(num_classes: int = 1000) -> VGG:
    """Configuration C: B plus a 1x1 conv at the end of each of the last three stages."""
    return VGG("C", num_classes=num_classes)


@register_model(
    "vgg16",
    family="vgg",
    paper=_PAPER,
    input_size=224,
    params=138_357_544,
    macs=15_470_264_320,
    reported=_reported(27.0, 8.8),
    layouts=LAYOUTS,
    notes="Configuration D.",
)
def vgg16(num_classes: int = 1000, layout: str = "paper") -> VGG:
    """Configuration D: 13 conv + 3 fully connected layers."""
    return VGG("D", num_classes=num_classes, layout=layout)


@register_model(
    "vgg19",
    family="vgg",
    paper=_PAPER,
    input_size=224,
    params=143_667_240,
    macs=19_632_062_464,
    reported=_reported(27.3, 9.0),
    layouts=LAYOUTS,
    notes="Configuration E.",
)
def vgg19(num_classes: int = 1000, layout: str = "paper") -> VGG:
    """Configuration E: 16 conv + 3 fully connected layers."""
    return VGG("E", num_classes=num_classes, layout=layout)


@register_model(
    "vgg11_bn",
    family="vgg",
    paper=_PAPER_BN,
    input_size=224,
    params=132_868_840,
    macs=7_609_090_048,
    layouts=LAYOUTS,
    notes=_BN_NOTES,
)
def vgg11_bn(num_classes: int = 1000, layout: str = "paper") -> VGG:
    """Configuration A with batch norm."""
    return VGG("A", num_classes=num_classes, batch_norm=True, layout=layout)


@register_model(
    "vgg13_bn",
    family="vgg",
    paper=_PAPER_BN,
    input_size=224,
    params=133_053_736,
    macs=11_308_466_176,
    layouts=LAYOUTS,
    notes=_BN_NOTES,
)
def vgg13_bn(num_classes: int = 1000, layout: str = "paper") -> VGG:
    """Configuration B with batch norm."""
    return VGG("B", num_classes=num_classes, batch_norm=True, layout=layout)


@register_model(
    "vgg16_bn",
    family="vgg",
    paper=_PAPER_BN,
    input_size=224,
    params=138_365_992,
    macs=15_470_264_320,
    layouts=LAYOUTS,
    notes=_BN_NOTES,
)
def vgg16_bn(num_classes: int = 1000, layout: str = "paper") -> VGG:
    """Configuration D with batch norm."""
    return VGG("D", num_classes=num_classes, batch_norm=True, layout=layout)


@register_model(
    "vgg19_bn",
    family="vgg",
    paper=_PAPER_BN,
    input_size=224,
    params=143_678_248,
    macs=19_632_062_464,
    layouts=LAYOUTS,
    notes=_BN_NOTES,
)
def vgg19_bn(num_classes: int = 1000, layout: str = "paper") -> VGG:
    """Configuration E with batch norm."""
    return VGG("E", num_classes=num_classes, batch_norm=True, layout=layout)
