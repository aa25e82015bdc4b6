"""The shortcut and unit ablations of He et al. 2016 ("Identity Mappings in Deep Residual
Networks", arXiv:1603.05027), sections 3 and 4, as options of the CIFAR ResNets.

A Residual Unit computes y = h(x) + F(x) and x_next = f(y) (Eqns. 1 and 2). Section 3 changes
the shortcut h of the original unit (f = ReLU) on ResNet-110 (Fig. 2, Table 1); section 4 moves
the unit's BN and ReLU around identity shortcuts on ResNet-110 and ResNet-164 (Fig. 4, Table 2).

`shortcut_variant` (basic-block nets resnet20 .. resnet1202), Fig. 2 and Table 1:

    value                  h(x)              F times   params (resnet110)   Table 1 error (%)
    identity (default)     x                 1         1,727,962            6.61
    constant-scaling       0.5 x             0.5       1,727,962            12.35
    exclusive-gating       (1 - g(x)) x      g(x)      1,824,186            8.70 (b_g = -6)
    shortcut-only-gating   (1 - g(x)) x      1         1,824,186            6.91 (-6), 12.86 (0)
    conv1x1                BN(W_s x)         1         1,826,202            12.22
    dropout                dropout(x), 0.5   1         1,727,962            fail

`unit` (the basic-block nets and the bottleneck resnet164), Fig. 4 and Table 2:

    value                  one unit                           params: 110, 164       Table 2
    original (default)     conv BN ReLU conv BN, add, ReLU    1,727,962  1,704,154   6.61  5.93
    bn-after-addition      conv BN ReLU conv, add, BN ReLU    1,727,962  1,704,154   8.17  6.50
    relu-before-addition   conv BN ReLU conv BN ReLU, add     1,727,962  1,704,154   7.84  6.14
    relu-preact            ReLU conv BN ReLU conv BN, add     1,727,962  1,704,154   6.71  5.91
    full-preact            BN ReLU conv BN ReLU conv, add     1,727,962  1,703,258   6.37  5.46

CIFAR-10 test errors, medians of 5 runs (section 3.1); "fail" is the paper's word for a test
error above 20% (Table 1's caption). The bottleneck unit has a third conv and its BN and ReLU
in the same places (conv1x1 BN ReLU conv3x3 BN ReLU conv1x1 BN, add, ReLU for the original).
"All these units consist of the same components -- only the orders are different" (Fig. 4), so
(b)-(d) have the original's parameters; full-preact is `preact_resnet110` / `preact_resnet164`
(or their basic-block siblings), whose first unit has no BN of its own and whose last one has
an extra BN-ReLU (appendix).

What the paper fixes, and we follow:
- g(x) = sigmoid(W_g x + b_g), "realized by a 1x1 convolutional layer", multiplying the signal
  element-wise (section 3.1, "Exclusive gating"): a 1x1 conv with a bias, as wide as the unit's
  output. b_g starts at `gate_bias`, default -6: for exclusive gating the best of the paper's
  search over 0 to -10 ("The best value (-6 here)"), and the shortcut-only gating row of Table 1
  that comes closest to the baseline. Table 1 also reports exclusive gating at -7 (9.81) and
  0 to -5 (fail), and shortcut-only gating at 0 (12.86).
- Constant scaling: lambda = 0.5 on every shortcut, and F "scaled by a constant scalar of
  1 - lambda = 0.5, which is similar to the highway gating but with frozen gates", the row of
  Table 1 with a number (unscaled F: "fail").
- The 1x1 conv shortcut is option C of He et al. 2015 (section 3.1: "known as option C"): a
  projection with batch norm on every shortcut ("BN layers ... are adopted right after the
  weight layers for all units here", Fig. 2).
- Dropout "at a ratio of 0.5 ... on the output of the identity shortcut", which "statistically
  imposes a scale of lambda with an expectation of 0.5 on the shortcut": the dropout of
  Hinton et al. 2012 (the paper's [11]), which keeps each value with probability 0.5 in
  training and multiplies by 0.5 at test, not PyTorch's inverted dropout (which would scale the
  kept values by 2 and leave the expectation at 1).
- Every unit gets the variant: "different types of shortcut connections applied to all
  Residual Units" (Table 1's caption; "We set lambda = 0.5 for all shortcuts"), the two where
  the width doubles included (the paper's footnote 1 notes that h is not an identity in those
  anyway).
- Pre-activation units (relu-preact and full-preact): "For the first Residual Unit ... we adopt
  the first activation right after conv1 and before splitting into two paths; for the last
  Residual Unit ... we adopt an extra activation right after its element-wise addition"
  (appendix). For relu-preact the stem's ReLU is the first unit's pre-activation (a ReLU on
  its output changes nothing) and a ReLU follows the last unit. Where shapes change the
  shortcut takes the pre-activated input ("these projection shortcuts are also with
  pre-activation", appendix).

Choices the paper leaves open (deviations, if any): in the two units where the width doubles,
the variant sits on top of the network's own shortcut: 0.5 pad(x), (1 - g(x)) pad(x) and
dropout(pad(x)) with option A, the gate a 1x1 conv with the unit's stride from its input,
and the strided projection for conv1x1. A gate's weights get the He init of every conv
(appendix: "the weights are initialized as in [23]"). Units (b)-(d) keep the network's
shortcuts where shapes change (ResNet-110: option A, no parameters; ResNet-164: a projection
with batch norm, as the original units have); the paper names no change there. The orders of
Fig. 4 are read from section 4.1's text ("adopting BN after addition", "move the ReLU before
addition", "ReLU-only pre-activation", "BN and ReLU are both adopted before weight layers")
and the caption's "same components, only the orders are different"; the stored copies of the
paper we could read hold its text, not the figure's drawing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlab.models.layers import IdentityShortcut
from cnnlab.models.registry import ModelOption
from cnnlab.models.resnet import BasicBlock, Bottleneck

__all__ = [
    "GATED",
    "SHORTCUT_VARIANTS",
    "UNITS",
    "BNAfterAdditionBlock",
    "BNAfterAdditionBottleneck",
    "ConstantScalingBlock",
    "DropoutShortcutBlock",
    "ExclusiveGatingBlock",
    "Gate",
    "ReLUBeforeAdditionBlock",
    "ReLUBeforeAdditionBottleneck",
    "ReLUPreActBlock",
    "ReLUPreActBottleneck",
    "ShortcutDropout",
    "ShortcutOnlyGatingBlock",
    "init_gates",
    "shortcut_variant_block",
    "unit_block",
]

PAPER = "He et al. 2016, arXiv:1603.05027"
SHORTCUT_VARIANTS = (
    "identity",
    "constant-scaling",
    "exclusive-gating",
    "shortcut-only-gating",
    "conv1x1",
    "dropout",
)
GATED = ("exclusive-gating", "shortcut-only-gating")
UNITS = ("original", "bn-after-addition", "relu-before-addition", "relu-preact", "full-preact")
DEFAULT_GATE_BIAS = -6.0  # Table 1: exclusive gating's best initial b_g (section 3.1)
SCALE = 0.5  # lambda on the shortcut and 1 - lambda on F (constant scaling, Table 1)
DROPOUT = 0.5  # "at a ratio of 0.5" (dropout shortcut)

# The options as the registry lists them (`cnnlab models --options resnet110`).
SHORTCUT_VARIANT_OPTION = ModelOption(
    "shortcut_variant", SHORTCUT_VARIANTS, f"{PAPER}, Fig. 2 and Table 1 (ResNet-110)"
)
GATE_BIAS_OPTION = ModelOption(
    "gate_bias",
    (),
    f"{PAPER}, section 3.1 and Table 1",
    note="the gates' initial bias b_g, a number; only with the gated shortcut variants, "
    f"default {DEFAULT_GATE_BIAS:g}",
)
UNIT_OPTION = ModelOption("unit", UNITS, f"{PAPER}, Fig. 4 and Table 2 (ResNet-110 and 164)")


# -- shortcuts (Fig. 2): original units, f = ReLU -----------------------------------------------


class Gate(nn.Module):
    """g(x) = sigmoid(W_g x + b_g): a 1x1 conv with a bias, then a sigmoid (section 3.1)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=True)
        nn.init.constant_(self.conv.bias, DEFAULT_GATE_BIAS)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.conv(x))


class ShortcutDropout(nn.Module):
    """Dropout as Hinton et al. 2012 define it: each value kept with probability 1 - p in
    training, all of them multiplied by 1 - p at test; an expectation of 1 - p either way."""

    def __init__(self, p: float = DROPOUT) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        # F.dropout scales the kept values by 1 / (1 - p) in training and passes x at test;
        # times 1 - p, that is a 0/1 mask in training and a scale of 1 - p at test.
        return F.dropout(x, self.p, self.training) * (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ConstantScalingBlock(BasicBlock):
    """relu(0.5 shortcut(x) + 0.5 F(x)): constant scaling, "frozen gating". Fig. 2(b)."""

    def forward(self, x: Tensor) -> Tensor:
        residual = self.relu(self.bn1(self.conv1(x)))
        residual = self.bn2(self.conv2(residual))
        return self.relu(SCALE * self.downsample(x) + (1 - SCALE) * residual)


class ExclusiveGatingBlock(BasicBlock):
    """relu((1 - g(x)) shortcut(x) + g(x) F(x)): the highway gates of Srivastava et al. 2015.
    Fig. 2(c)."""

    def __init__(
        self,
        in_channels: int,
        width: int,
        stride: int = 1,
        shortcut: str | None = "A",
        layout: str = "paper",
    ) -> None:
        super().__init__(in_channels, width, stride, shortcut, layout)
        self.gate = Gate(in_channels, width * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        g = self.gate(x)
        residual = self.relu(self.bn1(self.conv1(x)))
        residual = self.bn2(self.conv2(residual))
        return self.relu((1 - g) * self.downsample(x) + g * residual)


class ShortcutOnlyGatingBlock(ExclusiveGatingBlock):
    """relu((1 - g(x)) shortcut(x) + F(x)): the shortcut gated, F not scaled. Fig. 2(d)."""

    def forward(self, x: Tensor) -> Tensor:
        g = self.gate(x)
        residual = self.relu(self.bn1(self.conv1(x)))
        residual = self.bn2(self.conv2(residual))
        return self.relu((1 - g) * self.downsample(x) + residual)


class DropoutShortcutBlock(BasicBlock):
    """relu(dropout(shortcut(x)) + F(x)), dropout at a ratio of 0.5. Fig. 2(f)."""

    def __init__(
        self,
        in_channels: int,
        width: int,
        stride: int = 1,
        shortcut: str | None = "A",
        layout: str = "paper",
    ) -> None:
        super().__init__(in_channels, width, stride, shortcut, layout)
        self.shortcut_dropout = ShortcutDropout(DROPOUT)

    def forward(self, x: Tensor) -> Tensor:
        residual = self.relu(self.bn1(self.conv1(x)))
        residual = self.bn2(self.conv2(residual))
        return self.relu(self.shortcut_dropout(self.downsample(x)) + residual)


def shortcut_variant_block(variant: str) -> tuple[type[BasicBlock], str | None]:
    """The block class of a shortcut variant, and the shortcut option it forces (conv1x1: "C",
    a projection on every shortcut; None: the network's own)."""
    blocks: dict[str, tuple[type[BasicBlock], str | None]] = {
        "identity": (BasicBlock, None),
        "constant-scaling": (ConstantScalingBlock, None),
        "exclusive-gating": (ExclusiveGatingBlock, None),
        "shortcut-only-gating": (ShortcutOnlyGatingBlock, None),
        "conv1x1": (BasicBlock, "C"),  # Fig. 2(e): option C of He et al. 2015
        "dropout": (DropoutShortcutBlock, None),
    }
    return blocks[variant]


def init_gates(model: nn.Module, bias: float) -> None:
    """Set the initial bias b_g of every gate of `model` (section 3.1: "the initialization of
    the biases b_g is critical for training gated models")."""
    for m in model.modules():
        if isinstance(m, Gate):
            nn.init.constant_(m.conv.bias, bias)


# -- units (Fig. 4): identity shortcuts, BN and ReLU moved -------------------------------------


class BNAfterAdditionBlock(BasicBlock):
    """relu(bn(F(x) + shortcut(x))), F = conv(relu(bn(conv(x)))): BN after addition. Fig. 4(b)."""

    def forward(self, x: Tensor) -> Tensor:
        residual = self.relu(self.bn1(self.conv1(x)))
        residual = self.conv2(residual)
        return self.relu(self.bn2(residual + self.downsample(x)))


class ReLUBeforeAdditionBlock(BasicBlock):
    """relu(bn(conv(relu(bn(conv(x)))))) + shortcut(x): ReLU before addition. Fig. 4(c)."""

    def forward(self, x: Tensor) -> Tensor:
        residual = self.relu(self.bn1(self.conv1(x)))
        residual = self.relu(self.bn2(self.conv2(residual)))
        return residual + self.downsample(x)


class ReLUPreActBlock(BasicBlock):
    """bn(conv(relu(bn(conv(relu(x)))))) + shortcut(x): ReLU-only pre-activation. Fig. 4(d)."""

    def forward(self, x: Tensor) -> Tensor:
        preact = F.relu(x)  # not in place: the identity shortcut takes x itself
        # shortcut branch: identity on x, or zero padding / a projection of the pre-activated
        # input where shapes change (appendix)
        identity = isinstance(self.downsample, IdentityShortcut)
        shortcut = self.downsample(x if identity else preact)
        # residual branch
        residual = self.relu(self.bn1(self.conv1(preact)))
        residual = self.bn2(self.conv2(residual))
        return residual + shortcut


class BNAfterAdditionBottleneck(Bottleneck):
    """The bottleneck unit with its last BN after the addition: relu(bn(F(x) + shortcut(x))).
    Fig. 4(b)."""

    def forward(self, x: Tensor) -> Tensor:
        residual = self.relu(self.bn1(self.conv1(x)))
        residual = self.relu(self.bn2(self.conv2(residual)))
        residual = self.conv3(residual)
        return self.relu(self.bn3(residual + self.downsample(x)))


class ReLUBeforeAdditionBottleneck(Bottleneck):
    """The bottleneck unit with its last ReLU before the addition. Fig. 4(c)."""

    def forward(self, x: Tensor) -> Tensor:
        residual = self.relu(self.bn1(self.conv1(x)))
        residual = self.relu(self.bn2(self.conv2(residual)))
        residual = self.relu(self.bn3(self.conv3(residual)))
        return residual + self.downsample(x)


class ReLUPreActBottleneck(Bottleneck):
    """The bottleneck unit with its ReLUs before the convs and nothing after the addition.
    Fig. 4(d)."""

    def forward(self, x: Tensor) -> Tensor:
        preact = F.relu(x)  # not in place: the identity shortcut takes x itself
        # shortcut branch: identity on x, or a projection of the pre-activated input (appendix)
        identity = isinstance(self.downsample, IdentityShortcut)
        shortcut = self.downsample(x if identity else preact)
        # residual branch
        residual = self.relu(self.bn1(self.conv1(preact)))
        residual = self.relu(self.bn2(self.conv2(residual)))
        residual = self.bn3(self.conv3(residual))
        return residual + shortcut


def unit_block(unit: str, block: type[BasicBlock | Bottleneck]) -> type[BasicBlock | Bottleneck]:
    """The block class of a post-activation or ReLU-only pre-activation unit (Fig. 4(a)-(d))
    built on `block` (BasicBlock or Bottleneck). Full pre-activation is `preact_resnet`'s."""
    basic = block is BasicBlock
    blocks: dict[str, type[BasicBlock | Bottleneck]] = {
        "original": block,
        "bn-after-addition": BNAfterAdditionBlock if basic else BNAfterAdditionBottleneck,
        "relu-before-addition": ReLUBeforeAdditionBlock if basic else ReLUBeforeAdditionBottleneck,
        "relu-preact": ReLUPreActBlock if basic else ReLUPreActBottleneck,
    }
    return blocks[unit]
