"""Measure a network layer by layer: output sizes, parameters, multiply-adds, neurons,
connections, receptive field.

Everything here is measured on one forward pass of the real model (forward hooks on its leaf
modules and a torch function mode that follows every tensor), never read from a second copy
of the architecture. The pass runs on the "meta" device: shapes only, no memory, no arithmetic,
so VGG-19 or ResNet-1202 profile in well under a second.

Conventions:
- multiply-adds (MACs): one per multiply-accumulate of a convolution or a fully connected
  layer; the ResNet paper's and torchvision's "FLOPs" are these. `torch.utils.flop_counter`
  counts two per multiply-add; the tests hold the two to each other.
- neurons: output activations of a layer, for one image. The total counts the weighted layers
  (convolutions and fully connected), as the AlexNet paper's "650,000 neurons" does.
- connections: multiply-adds plus one bias input per output neuron where the layer has a bias,
  the count the AlexNet paper's "630 million connections" uses.
- receptive field: the side, in input pixels, of the window one output unit sees; stride: the
  distance in input pixels between neighbouring output units. Both along one axis, the
  vertical (the networks here are square; a 1x3 conv followed by a 3x1 conv sees 3x3, as
  the factorised GoogLeNet's do).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from cnnlab.models.registry import create_model, model_card

__all__ = ["InputSizeError", "LayerRow", "Profile", "profile", "smallest_input_size"]

_WEIGHTED = (nn.Conv2d, nn.Linear)
_WINDOWED = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


class InputSizeError(ValueError):
    """The input is too small for the network; the message names the smallest size that works."""


@dataclass(frozen=True)
class LayerRow:
    """One call of one leaf module."""

    name: str  # module path, e.g. "features.0"
    label: str  # paper-style name for weighted layers (conv1, ..., fc8, proj), else ""
    kind: str  # module class, e.g. "Conv2d"
    window: str  # "11x11/4" for convolutions and pools, else ""
    output_shape: tuple[int, ...]  # one image: (C, H, W) or (features,)
    params: int
    macs: int
    neurons: int
    connections: int
    receptive_field: int | None
    stride: int | None


@dataclass(frozen=True)
class Profile:
    """The per-layer rows and the totals of one network at one input size."""

    model: str
    input_size: int
    rows: tuple[LayerRow, ...]
    params: int
    macs: int
    neurons: int
    connections: int
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self, *, all_layers: bool = True) -> str:
        """The rows as an aligned text table, then the totals and notes."""
        header = ("layer", "type", "window", "output HxWxC", "params", "MACs", "neurons",
                  "connections", "RF", "stride")  # fmt: skip
        lines = [header]
        for r in self.rows:
            if not all_layers and not r.label:
                continue
            lines.append(
                (
                    r.label or r.name,
                    r.kind,
                    r.window,
                    _shape_hwc(r.output_shape),
                    f"{r.params:,}",
                    f"{r.macs:,}",
                    f"{r.neurons:,}",
                    f"{r.connections:,}",
                    "" if r.receptive_field is None else str(r.receptive_field),
                    "" if r.stride is None else str(r.stride),
                )
            )
        lines.append(("total", "", "", "", f"{self.params:,}", f"{self.macs:,}",
                      f"{self.neurons:,}", f"{self.connections:,}", "", ""))  # fmt: skip
        widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
        right = {4, 5, 6, 7, 8, 9}
        out = []
        for k, row in enumerate(lines):
            cells = [
                c.rjust(w) if i in right else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ]
            out.append("  ".join(cells).rstrip())
            if k == 0 or k == len(lines) - 2:
                out.append("  ".join("-" * w for w in widths))
        out.append(
            f"{self.model} at {self.input_size}x{self.input_size}: {self.params:,} parameters, "
            f"{self.macs:,} multiply-adds ({self.macs / 1e9:.2f} G), {self.neurons:,} neurons, "
            f"{self.connections:,} connections"
        )
        out.extend(f"note: {n}" for n in self.notes)
        return "\n".join(out)


@dataclass(frozen=True)
class _Geometry:
    """Where a feature map's units look in the input, along one axis."""

    rf: int  # receptive field side, input pixels
    jump: int  # input pixels between neighbouring units
    size: int  # units along the axis


class _GeometryMode(TorchFunctionMode):
    """Carries each tensor's geometry through every torch function (adds, concatenations,
    flattening, functional pooling): the output sees the widest window of its inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.geometry: dict[int, _Geometry] = {}
        self._alive: list[Tensor] = []  # keep tensors alive so their ids stay unique

    def set(self, t: Tensor, g: _Geometry) -> None:
        self.geometry[id(t)] = g
        self._alive.append(t)

    def get(self, t: object) -> _Geometry | None:
        return self.geometry.get(id(t)) if isinstance(t, Tensor) else None

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        inputs = [g for g in map(self.get, tree_flatten((args, kwargs))[0]) if g is not None]
        if inputs:
            g = max(inputs, key=lambda g: g.rf)
            for t in tree_flatten(out)[0]:
                if isinstance(t, Tensor) and id(t) not in self.geometry:
                    if t.dim() == 4 and t.shape[-1] != g.size:
                        # a functional resize (adaptive pooling, interpolation): each unit sees
                        # at least its share of the input map.
                        g = _global(g) if t.shape[-1] == 1 else g
                    elif (
                        t.dim() <= 2
                        and g.size > 1
                        and getattr(func, "__name__", "") not in _KEEPS_SPATIAL
                    ):
                        g = _global(g)  # a reduction over the map, e.g. x.mean((2, 3))
                    self.set(t, g)
        return out


# Functions that reshape a map without mixing its units: the next Linear sees the whole map.
_KEEPS_SPATIAL = {"flatten", "view", "reshape", "__get__", "size", "dim", "contiguous"}


def _global(g: _Geometry) -> _Geometry:
    return _Geometry(rf=g.rf + (g.size - 1) * g.jump, jump=g.jump * g.size, size=1)


def _pair(v: int | tuple[int, ...]) -> int:
    return v[0] if isinstance(v, tuple) else v


def _hw(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v[0], v[1]) if isinstance(v, tuple) else (v, v)


def _window(m: nn.Module) -> tuple[int, int, int, int]:
    """kernel, stride, padding, dilation along the vertical axis."""
    k, s = _pair(m.kernel_size), _pair(m.stride if m.stride is not None else m.kernel_size)
    p = m.padding
    d = _pair(getattr(m, "dilation", 1))
    if isinstance(p, str):  # "same" / "valid" convolutions
        p = (d * (k - 1)) // 2 if p == "same" else 0
    return k, s, _pair(p), d


def _trace(model: nn.Module, size: int, name: str, channels: int = 3) -> Profile:
    mode = _GeometryMode()
    rows: list[LayerRow] = []
    counted: set[int] = set()  # parameters are counted once, at a module's first call
    notes: list[str] = []
    labels = {"conv": 0}

    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor, path: str) -> None:
        x = inputs[0] if inputs else None
        g_in = mode.get(x)
        out = output if isinstance(output, Tensor) else None
        if out is None:
            return
        per_image = tuple(out.shape[1:])
        neurons = out[0].numel() if out.dim() > 0 else 1
        macs = 0
        window = ""
        g_out = mode.get(out)
        if isinstance(module, nn.Conv2d):
            macs = neurons * (module.in_channels // module.groups) * module.weight[0, 0].numel()
        elif isinstance(module, nn.Linear):
            macs = neurons * module.in_features
        if isinstance(module, _WINDOWED) and g_in is not None:
            k, s, p, d = _window(module)
            kh, kw = _hw(module.kernel_size)
            window = f"{kh}x{kw}/{s}"
            k_eff = d * (k - 1) + 1
            g_out = _Geometry(g_in.rf + (k_eff - 1) * g_in.jump, g_in.jump * s, out.shape[-1])
            in_side = x.shape[-1]
            dropped = (in_side + 2 * p - k_eff) % s
            # Only where windows touch or overlap (k >= s): a 1x1 stride-2 projection skips
            # every other pixel by design.
            if k_eff >= s and dropped > p and not getattr(module, "ceil_mode", False):
                notes.append(_tiling_note(path, k_eff, s, p, in_side, dropped - p))
        elif isinstance(module, nn.Linear) and g_in is not None:
            g_out = _global(g_in)
        elif isinstance(module, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d) and g_in is not None:
            g_out = _global(g_in) if out.shape[-1] == 1 else g_in
        if g_out is not None:
            mode.set(out, g_out)
        params = 0
        if id(module) not in counted:
            counted.add(id(module))
            params = sum(p.numel() for p in module.parameters(recurse=False))
        bias = getattr(module, "bias", None)
        connections = macs + (neurons if isinstance(bias, Tensor) and macs else 0)
        label = ""
        if isinstance(module, _WEIGHTED):
            if any(part in path for part in ("downsample", "shortcut")):
                label = "proj"
            else:
                labels["conv"] += 1
                kind = "conv" if isinstance(module, nn.Conv2d) else "fc"
                label = f"{kind}{labels['conv']}"
        rows.append(
            LayerRow(
                name=path,
                label=label,
                kind=type(module).__name__,
                window=window,
                output_shape=per_image,
                params=params,
                macs=macs,
                neurons=neurons,
                connections=connections,
                receptive_field=g_out.rf if g_out else None,
                stride=g_out.jump if g_out else None,
            )
        )

    handles = [
        m.register_forward_hook(lambda mod, i, o, path=path: hook(mod, i, o, path))
        for path, m in model.named_modules()
        if path and not list(m.children())
    ]
    state = {k: torch.empty_like(v, device="meta") for k, v in model.state_dict().items()}
    x = torch.empty(1, channels, size, size, device="meta")
    was_training = model.training
    model.eval()
    try:
        with mode:
            mode.set(x, _Geometry(rf=1, jump=1, size=size))
            torch.func.functional_call(model, state, (x,))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    weighted = [r for r in rows if r.macs]
    return Profile(
        model=name,
        input_size=size,
        rows=tuple(rows),
        params=sum(p.numel() for p in model.parameters()),
        macs=sum(r.macs for r in rows),
        neurons=sum(r.neurons for r in weighted),
        connections=sum(r.connections for r in rows),
        notes=tuple(dict.fromkeys(notes)),
    )


def _tiling_note(path: str, k: int, s: int, p: int, side: int, lost: int) -> str:
    span = side + 2 * p - k
    pad = f" + 2*{p}" if p else ""
    return (
        f"{path}: the {k}x{k} stride-{s} window does not tile a {side}x{side} input: "
        f"({side}{pad} - {k}) / {s} + 1 = {span / s + 1:g} is not whole, so the last {lost} "
        f"pixel row(s) and column(s) are never seen"
    )


def _runs(model: nn.Module, size: int, channels: int = 3) -> bool:
    try:
        _trace(model, size, "", channels)
    except RuntimeError:
        return False
    return True


def smallest_input_size(model: nn.Module, upper: int = 1024, channels: int = 3) -> int | None:
    """The smallest square input side the network accepts (None if not even `upper`)."""
    if not _runs(model, upper, channels):
        return None
    lo, hi = 1, upper  # a larger input never shrinks a feature map, so this is monotone
    while lo < hi:
        mid = (lo + hi) // 2
        if _runs(model, mid, channels):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _tiling_size(model: nn.Module, size: int, channels: int = 3) -> int | None:
    """The nearest size at or above `size` that every window tiles exactly."""
    for candidate in range(size, size + 64):
        if not _trace(model, candidate, "", channels).notes:
            return candidate
    return None


def profile(
    model_or_name: nn.Module | str,
    input_size: int | None = None,
    *,
    input_channels: int = 3,
    **options: object,
) -> Profile:
    """Measure a network layer by layer for one image.

    Args:
        model_or_name: a registered name (built on the meta device, no memory) or a module.
        input_size: side of the square input; default the card's (required for a module).
        input_channels: channels of the input: 3 for an image; for a module that takes
            feature maps, such as `cnnlab.analysis.comparison.conv_stack`, their width.
        **options: builder options when a name is given (num_classes, shortcut, layout...).

    Returns:
        A `Profile`: per-layer rows, totals, and notes (e.g. a window that does not tile the
        input, with the nearest size that it does).

    Raises:
        InputSizeError: the input is too small; the message names the smallest that works.
    """
    if isinstance(model_or_name, str):
        name = model_or_name
        card = model_card(name)
        size = input_size or card.input_size
        with torch.device("meta"):
            model = create_model(name, **options)
    else:
        model, name = model_or_name, type(model_or_name).__name__
        if input_size is None:
            raise ValueError("profile(module) needs input_size")
        size = input_size
    if size < 1:
        raise InputSizeError(f"input size must be a positive number of pixels, not {size}")
    try:
        result = _trace(model, size, name, input_channels)
    except RuntimeError as e:
        smallest = smallest_input_size(model, channels=input_channels)
        if smallest is None or smallest <= size:
            raise
        raise InputSizeError(
            f"{name} cannot take a {size}x{size} input: its feature maps shrink to nothing; "
            f"the smallest input that works is {smallest}x{smallest}"
        ) from e
    if result.notes:
        fit = _tiling_size(model, size, input_channels)
        if fit is not None and fit != size:
            result = dataclasses.replace(
                result, notes=(*result.notes, f"an input of {fit}x{fit} tiles every window exactly")
            )
    return result


def _shape_hwc(shape: tuple[int, ...]) -> str:
    if len(shape) == 3:
        c, h, w = shape
        return f"{h}x{w}x{c}"
    return "x".join(map(str, shape))
