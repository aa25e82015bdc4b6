"""Networks side by side: parameters, multiply-adds, receptive field, and ratios to the first.

    compare(["vgg19", "resnet34"])                     He et al. 2015, section 3.3: 3.6 billion
                                                       multiply-adds against 19.6 billion (18%)
    compare(["googlenet", "googlenet:factorize=5x5"])  Szegedy et al. 2015's factorisation
    compare(["conv_stack:kernels=7", "conv_stack:kernels=3,3,3"])
                                                       Simonyan & Zisserman 2014, section 2.3:
                                                       49 C^2 weights against 27 C^2, both 7x7

A spec is a registered model with its options as `-O` writes them,
"googlenet:factorize=5x5,num_classes=10" (`cnnlab.options.parse_spec`), or `conv_stack`:
a stack of convolutions from C channels to C channels, for the papers' layer-level arguments.
`conv_stack` is no paper's network and has no model card, so it is not in the registry (whose
tests hold every model to its card) and `cnnlab models` does not list it; it exists only here.

Every figure is measured by `profile` on the meta device, the same code path as `cnnlab summary`.
The receptive field is that of the last convolutional feature map: the widest window a unit of
any convolution sees (in an inception module, its widest branch; in a residual block, the
residual branch), in input pixels, before the pooling and classifier layers that follow.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cnnlab.analysis.complexity import Profile, profile
from cnnlab.models.registry import UnknownModelError
from cnnlab.options import parse_spec

__all__ = ["CONV_STACK", "Compared", "Comparison", "compare", "conv_stack"]

CONV_STACK = "conv_stack"  # the spec name of `conv_stack`
# A conv_stack's default input: 56 x 56, VGG's conv3 maps at 224. The ratios do not depend on
# it (every conv of a stack keeps the map's size); the absolute multiply-adds do.
CONV_STACK_INPUT = 56


def conv_stack(kernels: object = (3, 3, 3), channels: int = 64) -> nn.Sequential:
    """Convolutions from `channels` to `channels` maps, 'same' padding, each followed by a ReLU.

    The convs have no bias: the papers' counts are of weights, e.g. "3 (3^2 C^2) = 27 C^2"
    against "7^2 C^2 = 49 C^2" (Simonyan & Zisserman 2014, section 2.3).

    Args:
        kernels: one kernel or a tuple of them, in order; a kernel is an odd side n (n x n) or
            "HxW" ("1x3": one row of three, as in Szegedy et al. 2015, section 3.2).
        channels: C, the width of the input and of every conv.

    Raises:
        ValueError: no kernel, a kernel that is not an odd n or "HxW" of odd sides, or
            channels < 1.
    """
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        raise ValueError(f"conv_stack channels={channels!r} is not a positive whole number")
    kernels = kernels if isinstance(kernels, tuple) else (kernels,)
    if not kernels:
        raise ValueError("conv_stack needs at least one kernel (e.g. conv_stack:kernels=7)")
    layers: list[nn.Module] = []
    for kernel in kernels:
        kh, kw = _kernel(kernel)
        layers += [nn.Conv2d(channels, channels, (kh, kw), padding=(kh // 2, kw // 2), bias=False)]
        layers += [nn.ReLU()]
    return nn.Sequential(*layers)


def _kernel(kernel: object) -> tuple[int, int]:
    if isinstance(kernel, int) and not isinstance(kernel, bool):
        kh = kw = kernel
    elif isinstance(kernel, str) and re.fullmatch(r"\d+x\d+", kernel):
        kh, kw = (int(side) for side in kernel.split("x"))
    else:
        kh = kw = 0
    if min(kh, kw) < 1 or kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(
            f"conv_stack kernel {kernel!r} is not an odd side n or HxW of odd sides "
            "(e.g. conv_stack:kernels=3,3,3 or conv_stack:kernels=1x3,3x1)"
        )
    return kh, kw


@dataclass(frozen=True)
class Compared:
    """One network of a comparison, measured, with its ratios to the first network."""

    spec: str  # as given: "googlenet:factorize=5x5"
    input_size: int  # side of the square input measured
    params: int
    macs: int  # multiply-adds for one image
    receptive_field: int | None  # of the last convolutional feature map, input pixels
    stride: int | None  # input pixels between neighbouring units of that map
    params_ratio: float  # params / the first network's params
    macs_ratio: float  # macs / the first network's macs


@dataclass(frozen=True)
class Comparison:
    """Networks side by side; ratios are to the first."""

    rows: tuple[Compared, ...]

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        """An aligned text table, then a line saying what the columns count."""
        header = ("network", "input", "params", "ratio", "MACs", "ratio", "RF", "stride")
        lines = [header]
        for r in self.rows:
            lines.append(
                (
                    r.spec,
                    f"{r.input_size}x{r.input_size}",
                    f"{r.params:,}",
                    f"x{r.params_ratio:.3f}",
                    f"{r.macs:,}",
                    f"x{r.macs_ratio:.3f}",
                    "" if r.receptive_field is None else str(r.receptive_field),
                    "" if r.stride is None else str(r.stride),
                )
            )
        widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
        out = []
        for k, row in enumerate(lines):
            cells = [
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ]
            out.append("  ".join(cells).rstrip())
            if k == 0:
                out.append("  ".join("-" * w for w in widths))
        out.append(f"ratios to {self.rows[0].spec}; MACs: multiply-adds for one image")
        out.append(
            "RF, stride: receptive field of the last conv feature map and the step between its "
            "units, input pixels"
        )
        return "\n".join(out)


def compare(specs: Sequence[str], input_size: int | None = None) -> Comparison:
    """Measure networks given as specs and put them side by side, ratios to the first.

    Args:
        specs: "name" or "name:key=value,..." for a registered model, or "conv_stack:..."
            (see `conv_stack`); at least one.
        input_size: side of the square input for all of them; default each model's card's
            (56 for a conv_stack).

    Returns:
        A `Comparison`: per network, parameters, multiply-adds, receptive field and stride of
        the last conv feature map, and the parameter and multiply-add ratios to the first.

    Raises:
        UnknownModelError: a name that is neither registered nor conv_stack.
        ValueError: no specs, a malformed spec, or an option the network does not take.
        InputSizeError: an input too small for a network (the message names the smallest).
    """
    if not specs:
        raise ValueError("compare needs at least one model spec (e.g. googlenet vgg19)")
    profiles = [_measure(spec, input_size) for spec in specs]
    first = profiles[0]
    rows = []
    for spec, p in zip(specs, profiles, strict=True):
        convs = [r for r in p.rows if r.kind == "Conv2d" and r.receptive_field is not None]
        widest = max(convs, key=lambda r: r.receptive_field or 0, default=None)
        rows.append(
            Compared(
                spec=spec,
                input_size=p.input_size,
                params=p.params,
                macs=p.macs,
                receptive_field=widest.receptive_field if widest else None,
                stride=widest.stride if widest else None,
                params_ratio=p.params / first.params if first.params else float("nan"),
                macs_ratio=p.macs / first.macs if first.macs else float("nan"),
            )
        )
    return Comparison(rows=tuple(rows))


def _measure(spec: str, input_size: int | None) -> Profile:
    name, options = parse_spec(spec)
    if name == CONV_STACK:
        unknown = sorted(set(options) - {"kernels", "channels"})
        if unknown:
            raise ValueError(
                f"conv_stack does not take option(s) {', '.join(unknown)}; valid: channels, kernels"
            )
        with torch.device("meta"):
            stack = conv_stack(**options)
        size = input_size or CONV_STACK_INPUT
        return profile(stack, size, input_channels=stack[0].in_channels)
    try:
        return profile(name, input_size, **options)
    except UnknownModelError as e:
        raise UnknownModelError(
            f"{e}; compare also takes {CONV_STACK}:kernels=K,K,... (e.g. conv_stack:kernels=7)"
        ) from None
