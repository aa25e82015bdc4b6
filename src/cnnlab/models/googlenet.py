"""GoogLeNet (Szegedy et al. 2014, "Going Deeper with Convolutions", arXiv:1409.4842,
CVPR 2015; Table 1, Fig. 3, section 5).

A stem (conv 7x7/2, max-pool, LRN, conv 1x1, conv 3x3, LRN, max-pool; Fig. 3), nine inception
modules in three groups separated by 3x3/2 max-pools, global average pooling, dropout 0.4 and
one linear layer; 22 layers with parameters. Shapes at 224 x 224 (Table 1):

    stem         112 x 112 x 64 -> 56 x 56 x 64 -> 56 x 56 x 192 -> 28 x 28 x 192
    3a, 3b       28 x 28 x 256, 480         -> max-pool 3x3/2 -> 14 x 14 x 480
    4a .. 4e     14 x 14 x 512, .., 832     -> max-pool 3x3/2 -> 7 x 7 x 832
    5a, 5b       7 x 7 x 832, 1024          -> average pool -> dropout 0.4 -> linear

    model      input  params      multiply-adds  paper error, top-5
    googlenet  224    13,378,280  1,582,671,872  10.07  ILSVRC-2014 val, 1 model, 1 crop (Table 3)
                                                  6.67  ILSVRC-2014 test, 7 models, 144 crops
                                                        (Table 2)

    factorize     input  params      multiply-adds  (Szegedy et al. 2015's factorisations of
    "5x5"         224    13,070,184  1,514,971,904  this network, below; the paper reports
    "asymmetric"  224    12,241,640  1,352,401,664  no result for them)

The parameter count is the whole module's, the two auxiliary classifiers included (they are
trained; 6,998,552 without them); the multiply-adds are those of `forward`, which does not run
the auxiliary classifiers.

Auxiliary classifiers (section 5) sit on the outputs of 4a and 4d: 5x5/3 average pool (to
4 x 4), 1x1 conv with 128 filters, fully connected 1024, dropout 0.7, linear to the classes.
They exist for training only: `forward` always returns the logits of the main head, and
`forward_with_aux` returns `GoogLeNetOutputs(logits, aux1, aux2)` for the training loss,
loss = main + AUX_LOSS_WEIGHT * (aux1 + aux2).

Deviations and choices the paper leaves open:
- Max-pools round up (`ceil_mode=True`, as Caffe pools): 112 -> 56 and 14 -> 7 as in
  Table 1 need it.
- The LRN constants are not given; we use AlexNet's (k=2, n=5, alpha=1e-4, beta=0.75).
- Initialisation is not given (the paper trained with DistBelief); Glorot uniform, biases 0.
- The final 7x7/1 average pool is written as global average pooling (`AdaptiveAvgPool2d(1)`),
  the same at 224 and defined at other sizes. The auxiliary 5x5/3 pools give 4 x 4 only for
  14 x 14 maps, so in this layout `forward_with_aux` needs 14 x 14 maps at 4a and 4d (a 224
  input); `forward` runs at other sizes.
- ReLUs are not in-place, so hooks see each layer's output unmodified.

layout="torchvision" is torchvision's GoogLeNet: batch norm (eps 1e-3) after every conv and no
conv bias (`BasicConv2d`), a 3x3 conv where the paper has the 5x5 branch's 5x5 (a known
torchvision deviation, pytorch/vision#906), no LRN, a 2x2/2 fourth max-pool, adaptive 4 x 4
auxiliary pools, dropout 0.2, truncated-normal init. Parameter names are torchvision's, so
`torchvision.models.googlenet(aux_logits=True).state_dict()` loads strictly.

`factorize` (paper layout only; default None, the 2014 network) applies the factorisations of
Szegedy et al. 2015 ("Rethinking the Inception Architecture for Computer Vision",
arXiv:1512.00567) to the inception modules, as `FACTORIZE` lists them; the stem, Table 1's
widths and outputs, and the heads stay as they are:

- "5x5" (section 3.1, Fig. 5): in every module the 5x5 conv is two 3x3 convs with a ReLU
  between them (section 3.1: a linear first layer "was always inferior", Fig. 2). Same receptive
  field; 2 x 9 = 18 weights per channel pair against 25 at equal widths, the paper's 28% saving.
- "asymmetric" (section 3.2, Fig. 6): "5x5", and on the 14 x 14 grid (4a .. 4e) every 3x3 conv,
  the 3x3 branch's and the two of the 5x5 branch, as a 1x3 conv followed by a 3x1 conv (ReLU
  between): Fig. 6 with n = 3, 6 weights per channel pair against 9 (33%, section 3.2). The
  paper factorises so only "on medium grid-sizes (On m x m feature maps, where m ranges between
  12 and 20)", with n = 7 on Inception-v3's 17 x 17 grid. GoogLeNet has no 17 x 17 grid; its
  14 x 14 modules are the ones in that range, so 3a, 3b (28 x 28) and 5a, 5b (7 x 7) keep their
  3x3s. The parallel 1x3 and 3x1 of the paper's 8 x 8 modules (Fig. 7) widen the output and are
  not done.

Widths in a factorised branch: every conv but the last keeps the branch's reduced width (#3x3red
or #5x5red), the last gives the branch's width (#3x3 or #5x5). Section 3.1's estimate keeps the
width through both layers ("choosing alpha = 1 (no expansion)"), and Inception-v3's 17 x 17
modules keep the reduced width up to the last conv (torchvision's InceptionC, c7 channels).
Its 35 x 35 modules widen in the first 3x3 instead (64 -> 96 -> 96); with GoogLeNet's #5x5 two to
four times #5x5red that would make the two 3x3s dearer than the 5x5 they replace (3b: 9 x 32 x 96
+ 9 x 96 x 96 = 110,592 weights against 25 x 32 x 96 = 76,800). The torchvision layout refuses
`factorize`: it exists so that torchvision's state dicts load, and it has a 3x3 for the 5x5.

`transform_input=True` (torchvision layout only; default False, as torchvision's own default) is
torchvision's option of that name: a first module that takes inputs normalised with ImageNet's
mean and std to the mean 0.5, std 0.5 scaling that torchvision's published GoogLeNet weights
were trained with. torchvision turns it on whenever it loads those weights, and so does
`create_model("googlenet", weights=...)` (cnnlab.models.pretrained); with it, the same state
dict gives torchvision's logits on the same (ImageNet-normalised) input.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from cnnlab.models.alexnet import local_response_norm
from cnnlab.models.registry import Reported, check_choice, register_model

__all__ = [
    "AUX_LOSS_WEIGHT",
    "FACTORIZE",
    "INCEPTION",
    "MEDIUM_GRID",
    "BasicConv2d",
    "BranchKernels",
    "ConvReLU",
    "GoogLeNet",
    "GoogLeNetOutputs",
    "Inception",
    "InceptionAux",
    "InceptionWidths",
    "TransformInput",
    "googlenet",
]

LAYOUTS = ("paper", "torchvision")

# Section 5: "their loss gets added to the total loss of the network with a discount weight
# (the losses of the auxiliary classifiers were weighted by 0.3)".
AUX_LOSS_WEIGHT = 0.3


class GoogLeNetOutputs(NamedTuple):
    """What `GoogLeNet.forward_with_aux` returns: the main logits and the auxiliary ones."""

    logits: Tensor
    aux1: Tensor  # classifier on inception 4a
    aux2: Tensor  # classifier on inception 4d


@dataclass(frozen=True)
class InceptionWidths:
    """One row of Table 1: the filters of each branch of an inception module."""

    ch1x1: int
    ch3x3red: int
    ch3x3: int
    ch5x5red: int
    ch5x5: int
    pool_proj: int

    @property
    def out_channels(self) -> int:
        """Channels of the concatenated output."""
        return self.ch1x1 + self.ch3x3 + self.ch5x5 + self.pool_proj


# Szegedy et al. 2014, Table 1.
# fmt: off
INCEPTION: dict[str, InceptionWidths] = {
    #                    #1x1  #3x3red  #3x3  #5x5red  #5x5  pool proj    output
    "3a": InceptionWidths(64,   96,     128,   16,      32,    32),     # 256
    "3b": InceptionWidths(128,  128,    192,   32,      96,    64),     # 480
    "4a": InceptionWidths(192,  96,     208,   16,      48,    64),     # 512
    "4b": InceptionWidths(160,  112,    224,   24,      64,    64),     # 512
    "4c": InceptionWidths(128,  128,    256,   24,      64,    64),     # 512
    "4d": InceptionWidths(112,  144,    288,   32,      64,    64),     # 528
    "4e": InceptionWidths(256,  160,    320,   32,      128,   128),    # 832
    "5a": InceptionWidths(256,  160,    320,   32,      128,   128),    # 832
    "5b": InceptionWidths(384,  192,    384,   48,      128,   128),    # 1024
}
# fmt: on

Kernel = tuple[int, int]  # (height, width): (1, 3) is a 1x3 conv, one row of three


@dataclass(frozen=True)
class BranchKernels:
    """The convs after the 1x1 reductions of the 3x3 and the 5x5 branches, in order."""

    branch2: tuple[Kernel, ...]  # the 3x3 branch
    branch3: tuple[Kernel, ...]  # the 5x5 branch


PAPER_2014 = BranchKernels(((3, 3),), ((5, 5),))  # Szegedy et al. 2014, Fig. 2b
TORCHVISION = BranchKernels(((3, 3),), ((3, 3),))  # a 3x3 for the 5x5 (pytorch/vision#906)
# Szegedy et al. 2015, arXiv:1512.00567.
FIVE_AS_3X3 = BranchKernels(((3, 3),), ((3, 3), (3, 3)))  # Fig. 5
ASYMMETRIC_3 = BranchKernels(((1, 3), (3, 1)), ((1, 3), (3, 1), (1, 3), (3, 1)))  # Fig. 6, n = 3

# The 14 x 14 modules: Szegedy et al. 2015 factorise n x n into 1 x n, n x 1 only "on medium
# grid-sizes (On m x m feature maps, where m ranges between 12 and 20)", section 3.2.
MEDIUM_GRID = ("4a", "4b", "4c", "4d", "4e")

# factorize option -> the kernels of each inception module (see the module docstring).
FACTORIZE: dict[str, dict[str, BranchKernels]] = {
    "none": {m: PAPER_2014 for m in INCEPTION},
    "5x5": {m: FIVE_AS_3X3 for m in INCEPTION},
    "asymmetric": {m: ASYMMETRIC_3 if m in MEDIUM_GRID else FIVE_AS_3X3 for m in INCEPTION},
}


class ConvReLU(nn.Module):
    """Conv with bias, then ReLU: the paper's unit ("All the convolutions ... use rectified
    linear activation", section 5)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Kernel,
        stride: int = 1,
        padding: int | Kernel = 0,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.conv(x))


class BasicConv2d(nn.Module):
    """Conv without bias, batch norm (eps 1e-3), ReLU: torchvision's unit, its names."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Kernel,
        stride: int = 1,
        padding: int | Kernel = 0,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


ConvBlock = Callable[..., nn.Module]


class Inception(nn.Module):
    """Four branches concatenated along channels (Fig. 2b): 1x1; 1x1 then 3x3; 1x1 then 5x5;
    3x3 max-pool then 1x1 projection. `kernels` replaces the 3x3 and the 5x5 (2015's Fig. 5, 6)."""

    def __init__(
        self,
        in_channels: int,
        widths: InceptionWidths,
        conv_block: ConvBlock = ConvReLU,
        kernels: BranchKernels = PAPER_2014,
    ) -> None:
        super().__init__()
        w = widths
        self.branch1 = conv_block(in_channels, w.ch1x1, 1)
        self.branch2 = _reduce_then(conv_block, in_channels, w.ch3x3red, w.ch3x3, kernels.branch2)
        self.branch3 = _reduce_then(conv_block, in_channels, w.ch5x5red, w.ch5x5, kernels.branch3)
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
            conv_block(in_channels, w.pool_proj, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        branches = [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)]
        return torch.cat(branches, dim=1)


def _reduce_then(
    conv_block: ConvBlock,
    in_channels: int,
    reduced: int,
    out_channels: int,
    kernels: tuple[Kernel, ...],
) -> nn.Sequential:
    """A 1x1 reduction to `reduced` channels, then `kernels` with 'same' padding, a ReLU after
    each (`conv_block`): each keeps the reduced width but the last, which gives `out_channels`,
    as section 3.1's estimate (alpha = 1) and Inception-v3's 17 x 17 modules do; widening first
    would cost more than GoogLeNet's 5x5 (module docstring, "Widths")."""
    layers = [conv_block(in_channels, reduced, 1)]
    for i, (kh, kw) in enumerate(kernels):
        width = out_channels if i == len(kernels) - 1 else reduced
        layers.append(conv_block(reduced, width, (kh, kw), padding=(kh // 2, kw // 2)))
    return nn.Sequential(*layers)


class InceptionAux(nn.Module):
    """Auxiliary classifier (section 5): average pool to 4 x 4, 1x1 conv 128, fc 1024 with ReLU,
    dropout 0.7, linear to the classes."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        conv_block: ConvBlock = ConvReLU,
        pool: nn.Module | None = None,
    ) -> None:
        super().__init__()
        # The paper's 5x5 average pool of stride 3 takes 14 x 14 to 4 x 4.
        self.pool = nn.AvgPool2d(kernel_size=5, stride=3) if pool is None else pool
        self.conv = conv_block(in_channels, 128, 1)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(p=0.7)
        self.fc2 = nn.Linear(1024, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        # N x 512 (4a) or 528 (4d) x 14 x 14
        x = self.pool(x)
        # N x C x 4 x 4
        x = self.conv(x)
        # N x 128 x 4 x 4
        x = torch.flatten(x, 1)
        x = self.dropout(self.relu(self.fc1(x)))
        return self.fc2(x)


class TransformInput(nn.Module):
    """Input normalised with ImageNet's mean and std, re-normalised to mean 0.5 and std 0.5 per
    channel: x * std / 0.5 + (mean - 0.5) / 0.5. torchvision's `GoogLeNet._transform_input`,
    with its constants and its order of operations, so that the logits agree to the bit."""

    def forward(self, x: Tensor) -> Tensor:
        x_ch0 = torch.unsqueeze(x[:, 0], 1) * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
        x_ch1 = torch.unsqueeze(x[:, 1], 1) * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
        x_ch2 = torch.unsqueeze(x[:, 2], 1) * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
        return torch.cat((x_ch0, x_ch1, x_ch2), 1)


class GoogLeNet(nn.Module):
    """Stem, inception 3a..5b, global average pool, dropout, `fc`; auxiliary `aux1`, `aux2`.

    Args:
        num_classes: outputs of the main and the auxiliary classifiers.
        layout: "paper" or "torchvision" (see the module docstring).
        transform_input: torchvision's option for its published weights (torchvision layout
            only): ImageNet-normalised inputs re-normalised to mean 0.5, std 0.5 first.
        factorize: None or "none" (the 2014 network), "5x5" or "asymmetric": Szegedy et al.
            2015's factorisations (paper layout only; see the module docstring).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        layout: str = "paper",
        transform_input: bool = False,
        factorize: str | None = None,
    ) -> None:
        super().__init__()
        check_choice("layout", layout, LAYOUTS)
        factorize = "none" if factorize is None else factorize
        check_choice("factorize", factorize, tuple(FACTORIZE))
        paper = layout == "paper"
        if transform_input and paper:
            raise ValueError(
                "transform_input=True is torchvision's option for its published weights; "
                "use it with layout='torchvision'"
            )
        if factorize != "none" and not paper:
            raise ValueError(
                f"factorize={factorize!r} factorises the paper's network; use it with "
                "layout='paper' (the torchvision layout is there to load torchvision's weights)"
            )
        conv: ConvBlock = ConvReLU if paper else BasicConv2d
        kernels = FACTORIZE[factorize] if paper else {m: TORCHVISION for m in INCEPTION}

        # No parameters, so torchvision's state dict loads with it or without it; absent
        # (not an identity) by default, so that profiles show no extra layer.
        self.transform_input = TransformInput() if transform_input else None
        # Stem, Fig. 3.
        self.conv1 = conv(3, 64, 7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.lrn1 = local_response_norm() if paper else nn.Identity()
        self.conv2 = conv(64, 64, 1)
        self.conv3 = conv(64, 192, 3, padding=1)
        self.lrn2 = local_response_norm() if paper else nn.Identity()
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)

        self.inception3a = Inception(192, INCEPTION["3a"], conv, kernels["3a"])
        self.inception3b = Inception(256, INCEPTION["3b"], conv, kernels["3b"])
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)

        self.inception4a = Inception(480, INCEPTION["4a"], conv, kernels["4a"])
        self.inception4b = Inception(512, INCEPTION["4b"], conv, kernels["4b"])
        self.inception4c = Inception(512, INCEPTION["4c"], conv, kernels["4c"])
        self.inception4d = Inception(512, INCEPTION["4d"], conv, kernels["4d"])
        self.inception4e = Inception(528, INCEPTION["4e"], conv, kernels["4e"])
        # Table 1 has a 3x3/2 max-pool here; torchvision a 2x2/2 one (the same 14 -> 7).
        self.maxpool4 = nn.MaxPool2d(3 if paper else 2, stride=2, ceil_mode=True)

        self.inception5a = Inception(832, INCEPTION["5a"], conv, kernels["5a"])
        self.inception5b = Inception(832, INCEPTION["5b"], conv, kernels["5b"])

        self.aux1 = InceptionAux(512, num_classes, conv, None if paper else nn.AdaptiveAvgPool2d(4))
        self.aux2 = InceptionAux(528, num_classes, conv, None if paper else nn.AdaptiveAvgPool2d(4))

        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=0.4 if paper else 0.2)
        self.fc = nn.Linear(1024, num_classes)

        if paper:
            _init_glorot(self)
        else:
            _init_torchvision(self)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of the main classifier, in training and in eval mode alike."""
        x = self._stem_to_4a(x)
        x = self._4b_to_4d(x)
        return self._4e_to_logits(x)

    def forward_with_aux(self, x: Tensor) -> GoogLeNetOutputs:
        """Main and auxiliary logits, for the training loss (section 5).

        The auxiliary classifiers run whenever this is called, whatever the mode (their dropout
        follows it); `forward` never runs them.
        """
        x = self._stem_to_4a(x)
        aux1 = self.aux1(x)
        x = self._4b_to_4d(x)
        aux2 = self.aux2(x)
        return GoogLeNetOutputs(self._4e_to_logits(x), aux1, aux2)

    def _stem_to_4a(self, x: Tensor) -> Tensor:
        if self.transform_input is not None:
            x = self.transform_input(x)
        # N x 3 x 224 x 224
        x = self.maxpool1(self.conv1(x))
        # N x 64 x 56 x 56
        x = self.lrn1(x)
        x = self.conv3(self.conv2(x))
        # N x 192 x 56 x 56
        x = self.maxpool2(self.lrn2(x))
        # N x 192 x 28 x 28
        x = self.inception3b(self.inception3a(x))
        # N x 480 x 28 x 28
        x = self.maxpool3(x)
        # N x 480 x 14 x 14
        return self.inception4a(x)  # N x 512 x 14 x 14

    def _4b_to_4d(self, x: Tensor) -> Tensor:
        x = self.inception4c(self.inception4b(x))
        return self.inception4d(x)  # N x 528 x 14 x 14

    def _4e_to_logits(self, x: Tensor) -> Tensor:
        x = self.inception4e(x)
        # N x 832 x 14 x 14
        x = self.maxpool4(x)
        # N x 832 x 7 x 7
        x = self.inception5b(self.inception5a(x))
        # N x 1024 x 7 x 7
        x = torch.flatten(self.avgpool(x), 1)
        x = self.dropout(x)
        return self.fc(x)


def _init_glorot(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


def _init_torchvision(model: nn.Module) -> None:
    # torchvision.models.GoogLeNet.__init__ with init_weights=True (linear biases keep
    # PyTorch's default there too).
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@register_model(
    "googlenet",
    family="googlenet",
    paper="Szegedy et al. 2014, arXiv:1409.4842",
    input_size=224,
    params=13_378_280,
    macs=1_582_671_872,
    reported=(
        Reported("ImageNet top-5 val error (%)", 10.07, "Table 3 (1 model, 1 crop)"),
        Reported("ImageNet top-5 test error (%)", 6.67, "Table 2 (7 models, 144 crops)"),
    ),
    layouts=LAYOUTS,
    notes=(
        "params include the two auxiliary classifiers (training only); "
        "multiply-adds are forward()'s, without them."
    ),
)
def googlenet(
    num_classes: int = 1000,
    layout: str = "paper",
    transform_input: bool = False,
    factorize: str | None = None,
) -> GoogLeNet:
    """GoogLeNet as published (true 5x5 convs, LRN) or torchvision's batch-norm variant;
    `factorize` gives Szegedy et al. 2015's factorised convolutions."""
    return GoogLeNet(
        num_classes=num_classes,
        layout=layout,
        transform_input=transform_input,
        factorize=factorize,
    )
