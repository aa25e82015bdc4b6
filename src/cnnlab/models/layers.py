"""Pieces shared by the residual networks: the shortcut options, conv helpers, He init.

Shortcut options of He et al. 2015 (arXiv:1512.03385), section 3.3, "Identity vs.
Projection Shortcuts" (compared in Table 3):

    option  where shapes match   where shapes change (stride 2, more channels)
    A       identity             identity on a strided subsample, extra channels zero: no params
    B       identity             projection: 1x1 conv with the stride, then batch norm
    C       projection           projection

Every shortcut is a named module (never a lambda), so models pickle with `torch.save(model)`
and `repr(model)` shows which shortcut each block has. A projection is an `nn.Sequential` of
(conv, bn): a block that keeps it as its `downsample` attribute has the parameter names of
torchvision (`downsample.0.weight`, `downsample.1.running_mean`), so torchvision's weights
load into ours. The parameter-free shortcuts hold no state, so they do not disturb those names.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from cnnlab.models.registry import check_choice

__all__ = [
    "SHORTCUT_OPTIONS",
    "IdentityShortcut",
    "ProjectionShortcut",
    "ZeroPadShortcut",
    "conv1x1",
    "conv3x3",
    "first_conv",
    "init_he",
    "make_shortcut",
]

SHORTCUT_OPTIONS = ("A", "B", "C")


class IdentityShortcut(nn.Module):
    """The identity shortcut x -> x (He et al. 2015, Eqn. 1)."""

    def forward(self, x: Tensor) -> Tensor:
        return x


class ZeroPadShortcut(nn.Module):
    """Option A where shapes change: identity on every `stride`-th pixel, zeros for new channels.

    Parameter-free (He et al. 2015, section 3.3: "extra zero entries padded for increasing
    dimensions"). The zero channels follow the input channels, as in fb.resnet.torch's
    shortcut type A; the paper does not say where they go.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(
                f"zero padding cannot reduce channels ({in_channels} -> {out_channels})"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        # Output pixel i takes input pixel s*i: where the residual branch's strided conv
        # centres its window.
        x = x[:, :, :: self.stride, :: self.stride]
        # F.pad pads the last dims first: (W left, W right, H top, H bottom, C front, C back).
        return F.pad(x, (0, 0, 0, 0, 0, self.out_channels - self.in_channels))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class ProjectionShortcut(nn.Sequential):
    """Options B and C: a 1x1 conv with the block's stride, then batch norm (Eqn. 2, W_s x).

    Indices 0 and 1 are torchvision's `downsample.0` and `downsample.1`. With
    `batch_norm=False` it is the conv alone: the pre-activation units of He et al. 2016 add
    the projection to a residual branch that ends in a conv, not a batch norm.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, batch_norm: bool = True
    ) -> None:
        layers: list[nn.Module] = [conv1x1(in_channels, out_channels, stride)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        super().__init__(*layers)


def make_shortcut(
    option: str, in_channels: int, out_channels: int, stride: int, batch_norm: bool = True
) -> nn.Module:
    """The shortcut of a block under option "A", "B" or "C" (He et al. 2015, section 3.3).

    Args:
        option: "A" (parameter-free), "B" (projection where shapes change) or "C"
            (projection everywhere).
        in_channels: channels entering the block.
        out_channels: channels leaving the block.
        stride: the block's spatial stride.
        batch_norm: whether projections end in batch norm (False for pre-activation units).

    Raises:
        ValueError: an option other than A, B, C, naming the valid ones.
    """
    check_choice("shortcut", option, SHORTCUT_OPTIONS)
    same_shape = in_channels == out_channels and stride == 1
    if option == "C" or (option == "B" and not same_shape):
        return ProjectionShortcut(in_channels, out_channels, stride, batch_norm=batch_norm)
    if same_shape:
        return IdentityShortcut()
    return ZeroPadShortcut(in_channels, out_channels, stride)


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """The first convolution that sees the image (the first Conv2d in module order), by name.

    Raises:
        ValueError: the model has no Conv2d.
    """
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return name, m
    raise ValueError(f"{type(model).__name__} has no 2-d convolution (Conv2d)")


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3x3 conv, padding 1, no bias (a batch norm follows or precedes it)."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """1x1 conv, no bias (a batch norm follows or precedes it)."""
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


def init_he(model: nn.Module) -> None:
    """He et al. 2015 init ("We initialize the weights as in [13]", section 3.4).

    Conv weights from N(0, 2 / fan_out) (He et al. 2015b, arXiv:1502.01852, the
    backward-pass form torchvision also uses); batch norm scale 1 and shift 0. The last batch
    norm of each residual branch is NOT zeroed (that is Goyal et al. 2017, not these papers).
    Linear layers keep PyTorch's default init: the papers do not specify theirs.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
