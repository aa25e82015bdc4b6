"""What a network sees: first-layer filters, stage activations, and projections of single
units back to pixel space (the deconvnet, guided backpropagation, the plain gradient).

Zeiler and Fergus 2013 ("Visualizing and Understanding Convolutional Networks",
arXiv:1311.2901, section 2.1 and Fig. 1) project one activation back to pixel space by running
the network's layers in reverse, each undone by its "deconvnet" counterpart:

    forward layer       deconvnet step                        here: the backward pass of
    max pooling         unpooling: each value goes back to     max_pool2d (routes to the
                        the max location ("switch") recorded   recorded argmax)
                        on the way up
    ReLU                rectification: relu of the signal      a ReLU whose backward is
                        coming down                            relu(grad_out) (DeconvReLU)
    convolution         the same filters, transposed           conv2d (conv_transpose2d
                                                               with the same weights)

so the projection of a unit is the gradient of that unit with respect to the input, with each
ReLU's backward replaced by "rectify what comes down", whatever the forward pass let through
(Springenberg et al. 2015, arXiv:1412.6806, section 3.4, state the same equivalence).

The three methods differ only at the ReLUs (Springenberg et al. 2015, section 3.4 and Fig. 1);
max pooling routes to its switches and convolutions use their transposed filters in all three:

    method      what a ReLU lets down                                    module
    deconvnet   where the signal coming down is positive                  DeconvReLU
    guided      where that signal and the ReLU's input going up are both  GuidedReLU
                positive (guided backpropagation)
    saliency    where the ReLU's input going up was positive: the plain   nn.ReLU, unchanged
                gradient (Simonyan et al. 2014, arXiv:1312.6034)

Without max pooling (the CIFAR ResNets) the deconvnet never looks at the image: every step
down is the same linear map, then a rectification, for any input, so the projections of a
channel's units at one position are the same picture, scaled by the activation. Guided
backpropagation and the gradient are gated by the image's own ReLU pattern and differ from
image to image. `backward_rule(model, method)` swaps the model's `nn.ReLU` modules for the
method's for the duration of a `with` block and restores them after (`deconvnet(model)` and
`guided_backprop(model)` name two of them); the model files are never edited.

Choices the paper leaves open, for the networks it did not have (they hold for all three
methods):
- Batch norm (ResNets), in eval mode, is a per-channel affine map; its backward is the same
  map's transpose (a per-channel scale), the natural deconvnet step.
- Local response normalisation ("contrast normalisation", ZFNet and AlexNet) is passed
  through by its local Jacobian (the ordinary backward); section 2.1 does not say.
- A residual block's addition sends the signal down both branches, unchanged.
- Biases play no part (the backward of a convolution ignores them), as in the paper.

Only one unit is projected: the channel's largest activation in that image, all others zero
(section 2.1, "to examine a given convnet activation, we set all other activations in the
layer to zero"). Every method starts from that activation's value, so the three are on one
scale and the gradient's projection is activation x d(unit)/d(input).

The image patches next to the projections are the unit's receptive field: the box of input
pixels that can reach it, measured on a copy of the network made positive and linear
(`receptive_field_boxes`), so that it holds for any wiring of convolutions, pools and shortcuts.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from cnnlab.data import Normalize
from cnnlab.models.layers import first_conv
from cnnlab.models.pretrained import Pretrained, load
from cnnlab.models.registry import create_model, list_models, model_card

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "METHODS",
    "ChannelProjections",
    "DeconvReLU",
    "GuidedReLU",
    "Network",
    "TopUnit",
    "backward_rule",
    "check_method",
    "deconv_top_images",
    "deconvnet",
    "default_stages",
    "describe_layers",
    "first_conv",
    "guided_backprop",
    "kernel_images",
    "layer_names",
    "load_image",
    "load_images",
    "load_network",
    "project",
    "receptive_field_boxes",
    "resolve_layer",
    "spread_subset",
    "stage_outputs",
]

# The usual ImageNet statistics (torchvision's), in 0..1 units: used for a bare model name,
# which has no training data to take them from.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# -- the network and its input ---------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Network:
    """A network in eval mode with what it takes to feed it images.

    Attributes:
        model: the network, eval mode, on the CPU.
        name: its registered model name.
        source: "checkpoint PATH", "torchvision weights NAME" or "random weights".
        classes: the class names of its outputs; None for random weights (and for weights
            without a classifier).
        mean: input mean in 0..1 units, per channel (C,) or per pixel (C, H, W).
        std: per-channel standard deviation, or None (mean subtracted only).
        image_size: (height, width) the network takes: its training images' size, the crop
            of published weights, or the card's input size for a bare model name.
        notes: what a reader of the figures should know (e.g. assumed statistics).
        pretrained: torchvision's published weights, when those are loaded; `prepare` then
            resizes and crops as their transforms do.
    """

    model: nn.Module
    name: str
    source: str
    classes: tuple[str, ...] | None
    mean: Tensor
    std: Tensor | None
    image_size: tuple[int, int]
    notes: tuple[str, ...] = ()
    pretrained: Pretrained | None = None

    @property
    def trained(self) -> bool:
        return self.classes is not None

    def prepare(self, images: Tensor) -> Tensor:
        """uint8 N x 3 x H x W images (one size) as the network sees them, uint8 of
        `image_size`: with published weights, the shorter side resized and the centre
        cropped as torchvision's transforms for them do; otherwise resized as a whole."""
        if self.pretrained is not None:
            return self.pretrained.prepare(images)
        if tuple(images.shape[-2:]) == self.image_size:
            return images
        x = F.interpolate(
            images.float(), size=self.image_size, mode="bilinear", align_corners=False,
            antialias=images.shape[-1] > self.image_size[1],
        )  # fmt: skip
        return x.round_().clamp_(0, 255).to(torch.uint8)

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 images of `image_size` to the network's input: (x / 255 - mean) / std."""
        return Normalize(self.mean, self.std)(images)


def load_network(checkpoint_or_name: str | Path, weights: str | None = None) -> Network:
    """A checkpoint's network, a registered model with random weights, or one with
    torchvision's published weights.

    Args:
        checkpoint_or_name: a checkpoint file or run folder written by `cnnlab train`, or a
            registered model name (random weights, seed 0, the card's input size and ImageNet
            statistics: handy to see an untrained network).
        weights: with a model name, torchvision's published weights for it ("IMAGENET1K_V1",
            "DEFAULT"; see cnnlab.models.pretrained): the trained network, its classes, and
            its input pipeline (resize, centre crop, mean and std).

    Raises:
        FileNotFoundError: neither an existing path nor a registered model name.
        CheckpointError: the checkpoint cannot be used (see `load_checkpoint`).
        ValueError: `weights` with a checkpoint, or weights the model does not have.
        WeightsFileError: the weights cannot be found, downloaded or read.
    """
    spec = str(checkpoint_or_name)
    if weights is not None:
        return _pretrained_network(spec, weights)
    if Path(spec).exists():
        from cnnlab.train.evaluate import load_model

        model, state = load_model(spec, "cpu")
        shape = state.get("image_shape")
        size = (int(shape[1]), int(shape[2])) if shape else _card_size(state["model"])
        std = state.get("std")
        return Network(
            model=model.eval(),
            name=str(state["model"]),
            source=f"checkpoint {spec} (step {state.get('step', '?')})",
            classes=tuple(state["classes"]),
            mean=torch.as_tensor(state["mean"], dtype=torch.float32),
            std=None if std is None else torch.as_tensor(std, dtype=torch.float32),
            image_size=size,
        )
    if spec in list_models():
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = create_model(spec)
        return Network(
            model=model.eval(),
            name=spec,
            source="random weights",
            classes=None,
            mean=torch.tensor(IMAGENET_MEAN),
            std=torch.tensor(IMAGENET_STD),
            image_size=_card_size(spec),
            notes=("random weights (seed 0); inputs normalised with ImageNet mean and std",),
        )
    raise FileNotFoundError(
        f"{spec}: no such checkpoint file or run folder, and not a registered model name "
        "(`cnnlab models` lists them)"
    )


def _pretrained_network(name: str, weights: str) -> Network:
    model, meta = load(name, weights)
    return Network(
        model=model.eval(),
        name=name,
        source=f"torchvision weights {meta.weights}",
        classes=meta.classes,
        mean=torch.tensor(meta.mean),
        std=torch.tensor(meta.std),
        image_size=meta.input_size,
        notes=(meta.describe(),),
        pretrained=meta,
    )


def _card_size(name: str) -> tuple[int, int]:
    side = model_card(name).input_size
    return side, side


def load_image(path: str | Path) -> Tensor:
    """An image file as uint8 3 x H x W (RGB).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not an image PIL can read.
    """
    from PIL import Image, UnidentifiedImageError

    if not Path(path).is_file():
        raise FileNotFoundError(f"no image file {path}")
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            pixels = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
            width, height = img.size
    except (OSError, UnidentifiedImageError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from None
    return pixels.view(height, width, 3).permute(2, 0, 1).contiguous()


def load_images(paths: Sequence[str | Path]) -> tuple[list[Tensor], list[str]]:
    """Image files, and the image files in folders (not their subfolders), in the order given
    (a folder's in name order), each as uint8 3 x H x W of its own size.

    Returns:
        (the images, their file names).

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: a file PIL cannot read, a folder without images, or no paths at all.
    """
    from cnnlab.data.imagefolder import IMAGE_SUFFIXES, is_image

    files: list[Path] = []
    for spec in paths:
        path = Path(spec)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and is_image(p.name))
            if not found:
                raise ValueError(
                    f"{path}: no image files in this folder ({', '.join(IMAGE_SUFFIXES)})"
                )
            files += found
        elif path.exists():
            files.append(path)
        else:
            raise FileNotFoundError(f"no image file or folder {path}")
    if not files:
        raise ValueError("name at least one image file or folder")
    return [load_image(f) for f in files], [f.name for f in files]


# -- layers by name --------------------------------------------------------------------------


def layer_names(model: nn.Module, input_size: int) -> dict[str, str]:
    """Paper-style labels of the weighted layers ("conv1", "conv5") -> module paths.

    The labels are those of `cnnlab.profile` (conv layers counted in forward order).
    """
    from cnnlab.analysis.complexity import profile

    rows = profile(model, input_size).rows
    return {r.label: r.name for r in rows if r.label.startswith("conv")}


def describe_layers(model: nn.Module, paths: Sequence[str], input_size: int) -> dict[str, str]:
    """Each module path with the last conv before its output: "features.6 (MaxPool2d after
    conv2)", "layer2 (up to conv13)", for figure titles."""
    from cnnlab.analysis.complexity import profile

    rows = profile(model, input_size).rows
    out = {}
    for path in paths:
        mine = [i for i, r in enumerate(rows) if r.name == path or r.name.startswith(path + ".")]
        convs = (
            [r.label for r in rows[: mine[-1] + 1] if r.label.startswith("conv")] if mine else []
        )
        module = model.get_submodule(path)
        if not convs:
            out[path] = path
        elif list(module.children()):
            out[path] = f"{path} (up to {convs[-1]})"
        else:
            out[path] = f"{path} ({type(module).__name__} after {convs[-1]})"
    return out


def resolve_layer(model: nn.Module, layer: str, input_size: int) -> str:
    """The module path of `layer`: a module path ("features.12", "layer3") or a conv label.

    Raises:
        ValueError: no such module; the message names the stages and conv labels.
    """
    modules = dict(model.named_modules())
    if layer in modules and layer:
        return layer
    labels = layer_names(model, input_size)
    if layer in labels:
        return labels[layer]
    known = list(default_stages(model)) + list(labels)
    raise ValueError(
        f"no layer {layer!r} in {type(model).__name__}; name a module path "
        f"(e.g. {', '.join(known[:6])}) or a conv label (conv1..conv{len(labels)})"
    )


def kernel_images(conv: nn.Conv2d) -> Tensor:
    """The kernels of a first-layer conv as RGB images, each min-max normalised to 0..1.

    Returns:
        out_channels x k x k x 3 (HWC, ready for imshow).

    Raises:
        ValueError: the conv does not take 3 channels (its kernels are not images).
    """
    w = conv.weight.detach().float()
    if w.shape[1] != 3:
        raise ValueError(f"the first conv takes {w.shape[1]} channels, not 3 (RGB)")
    lo = w.amin(dim=(1, 2, 3), keepdim=True)
    hi = w.amax(dim=(1, 2, 3), keepdim=True)
    w = (w - lo) / (hi - lo).clamp_min(1e-12)
    return w.permute(0, 2, 3, 1).contiguous()


def default_stages(model: nn.Module) -> list[str]:
    """The modules whose outputs are a network's stages, in forward order.

    ResNets: the stage containers (`layer1`..`layer4`, torchvision's names). Networks built as
    a sequence (AlexNet, ZFNet, VGG, GoogLeNet): the output of each strided pooling layer.
    """
    stages = [n for n, _ in model.named_children() if re.fullmatch(r"layer\d+", n)]
    if stages:
        return stages
    return [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.MaxPool2d | nn.AvgPool2d) and _first(m.stride or m.kernel_size) > 1
    ]


def _first(v: int | Sequence[int]) -> int:
    return v if isinstance(v, int) else v[0]


class _Reached(Exception):
    """Raised by a hook to stop a forward pass once the layer of interest has run."""

    def __init__(self, output: Tensor) -> None:
        super().__init__()
        self.output = output


def _forward_to(
    model: nn.Module, x: Tensor, layer: str, state: dict[str, Tensor] | None = None
) -> Tensor:
    """Run `model` on `x` only as far as `layer` and return that layer's output.

    With `state`, those parameters and buffers stand in for the model's own
    (`torch.func.functional_call`); the layers after `layer` never run.
    """
    module = model.get_submodule(layer)

    def stop(_m: nn.Module, _i: object, output: Tensor) -> None:
        raise _Reached(output)

    handle = module.register_forward_hook(stop)
    try:
        if state is None:
            model(x)
        else:
            torch.func.functional_call(model, state, (x,))
    except _Reached as r:
        return r.output
    finally:
        handle.remove()
    raise ValueError(f"layer {layer!r} is never called in {type(model).__name__}.forward")


def _check_called_once(model: nn.Module, layer: str, x: Tensor) -> tuple[int, ...]:
    """The per-image output shape of `layer`; raises if it is not called exactly once."""
    outputs: list[tuple[int, ...]] = []
    handle = model.get_submodule(layer).register_forward_hook(
        lambda _m, _i, o: outputs.append(tuple(o.shape[1:]))
    )
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        handle.remove()
    if len(outputs) != 1:
        raise ValueError(
            f"layer {layer!r} runs {len(outputs)} times per forward pass (a module shared "
            "within a block); name a module that runs once, e.g. the block or its conv"
        )
    if len(outputs[0]) != 3:
        raise ValueError(
            f"layer {layer!r} gives {outputs[0]}-shaped outputs, not feature maps (C x H x W)"
        )
    return outputs[0]


def stage_outputs(
    model: nn.Module, x: Tensor, layers: Sequence[str] | None = None
) -> dict[str, Tensor]:
    """The outputs of each stage (or of `layers`) for a batch, by forward hooks.

    Args:
        model: the network (run in eval mode, no gradients).
        x: normalised input, N x 3 x H x W.
        layers: module paths; default `default_stages(model)`.

    Returns:
        module path -> its output (a copy, taken before any later in-place op), forward order.
    """
    layers = list(default_stages(model) if layers is None else layers)
    if not layers:
        raise ValueError(f"no stages found in {type(model).__name__}; name the layers")
    outputs: dict[str, Tensor] = {}

    def keep(name: str, output: Tensor) -> None:
        # Returns None: a hook's return value would replace the output, and an in-place op
        # after the layer (a ReLU) would then change the copy kept here.
        outputs.setdefault(name, output.detach().clone())

    handles = []
    for name in layers:
        module = model.get_submodule(name)
        handles.append(module.register_forward_hook(lambda _m, _i, o, name=name: keep(name, o)))
    try:
        with torch.no_grad(), _eval(model):
            model(x)
    finally:
        for h in handles:
            h.remove()
    return {name: outputs[name] for name in layers if name in outputs}


@contextlib.contextmanager
def _eval(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


# -- the deconvnet, guided backpropagation and the gradient ---------------------------------

# Projection methods: what a ReLU lets down (see the module docstring).
METHODS = ("deconvnet", "guided", "saliency")


class _RectifiedBackward(torch.autograd.Function):
    """relu going up; relu of the signal coming down, whatever went up (ZF section 2.1)."""

    @staticmethod
    def forward(ctx: object, x: Tensor) -> Tensor:
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: object, grad_output: Tensor) -> Tensor:
        return grad_output.clamp(min=0)


class _GuidedBackward(torch.autograd.Function):
    """relu going up; coming down, the signal where both it and the input going up are
    positive (Springenberg et al. 2015, section 3.4, Fig. 1)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:
        # The mask, not the output: a later in-place op on the output cannot change it.
        ctx.save_for_backward(x > 0)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_output: Tensor) -> Tensor:
        (positive,) = ctx.saved_tensors
        return grad_output.clamp(min=0) * positive


class DeconvReLU(nn.Module):
    """A ReLU whose backward pass is the deconvnet's rectification (never in place)."""

    def forward(self, x: Tensor) -> Tensor:
        return _RectifiedBackward.apply(x)


class GuidedReLU(nn.Module):
    """A ReLU whose backward pass is guided backpropagation's (never in place)."""

    def forward(self, x: Tensor) -> Tensor:
        return _GuidedBackward.apply(x)


# The ReLU each method puts in place of nn.ReLU; None: the ReLU stays (the plain gradient).
_RELUS: dict[str, type[nn.Module] | None] = {
    "deconvnet": DeconvReLU,
    "guided": GuidedReLU,
    "saliency": None,
}


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


@contextlib.contextmanager
def _swapped(model: nn.Module, replace: dict[type[nn.Module], type]) -> Iterator[nn.Module]:
    """Replace every module of the given types (by path, shared ones under all their paths),
    restore the originals on exit."""
    originals = [
        (path, m)
        for path, m in model.named_modules(remove_duplicate=False)
        if path and type(m) in replace
    ]
    try:
        for path, m in originals:
            _set_submodule(model, path, replace[type(m)](m))
        yield model
    finally:
        for path, m in reversed(originals):
            _set_submodule(model, path, m)


_FUNCTIONAL_RELU = {F.relu, F.relu_, torch.relu, torch.relu_, Tensor.relu, Tensor.relu_}


class _NoFunctionalReLU(TorchFunctionMode):
    """Refuses a ReLU called as a function: the deconvnet (or guided backpropagation) could
    not change its backward pass."""

    def __init__(self, method: str = "deconvnet") -> None:
        super().__init__()
        self.method = method

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if func in _FUNCTIONAL_RELU:
            raise ValueError(
                "the network applies a ReLU as a function, not as an nn.ReLU module; the "
                f"{self.method} projection swaps nn.ReLU modules and cannot change its backward "
                "pass (the plain gradient, method saliency, needs no swap)"
            )
        return func(*args, **(kwargs or {}))


def check_method(method: str) -> str:
    """`method` if it is one of METHODS.

    Raises:
        ValueError: another name; the message lists them.
    """
    if method not in METHODS:
        raise ValueError(f"unknown projection method {method!r}; choose from {', '.join(METHODS)}")
    return method


@contextlib.contextmanager
def backward_rule(model: nn.Module, method: str = "deconvnet") -> Iterator[nn.Module]:
    """Within the block, the model's backward pass projects to pixel space by `method`.

    "deconvnet" and "guided" swap every `nn.ReLU` module (in place or not) for a `DeconvReLU`
    or a `GuidedReLU`; "saliency" leaves the ReLUs alone (the plain gradient). The forward
    values are unchanged. The model is put in eval mode (batch norm as an affine map, no
    dropout). On exit the original modules and mode are restored.

    Raises:
        ValueError: an unknown method; (inside the block, deconvnet and guided) the model
            calls relu as a function.
    """
    relu = _RELUS[check_method(method)]
    if relu is None:
        with _eval(model):
            yield model
        return
    with _eval(model), _swapped(model, {nn.ReLU: lambda _m: relu()}), _NoFunctionalReLU(method):
        yield model


@contextlib.contextmanager
def deconvnet(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, the model's backward pass is Zeiler and Fergus's deconvnet
    (`backward_rule(model, "deconvnet")`)."""
    with backward_rule(model, "deconvnet"):
        yield model


@contextlib.contextmanager
def guided_backprop(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, the model's backward pass is Springenberg et al.'s guided
    backpropagation (`backward_rule(model, "guided")`)."""
    with backward_rule(model, "guided"):
        yield model


def project(
    model: nn.Module,
    x: Tensor,
    layer: str,
    channel: int,
    positions: Tensor | None = None,
    *,
    method: str = "deconvnet",
) -> tuple[Tensor, Tensor, Tensor]:
    """Projections to pixel space of one unit per image.

    Args:
        model: the network.
        x: normalised input, N x 3 x H x W.
        layer: module path of a layer with feature-map outputs (N x C x h x w).
        channel: the feature map.
        positions: N x 2 (row, col) of the unit to project in each image; default the
            channel's largest activation in that image (ZF section 2.1).
        method: "deconvnet" (Zeiler and Fergus), "guided" (guided backpropagation) or
            "saliency" (the plain gradient); see the module docstring. Each starts from the
            unit's activation, all other units of the layer zero.

    Returns:
        (projections N x 3 x H x W, the units' activations N, their positions N x 2).
    """
    x = x.detach().clone().requires_grad_(True)
    with backward_rule(model, method), torch.enable_grad():
        out = _forward_to(model, x, layer)
        if out.dim() != 4:
            raise ValueError(f"layer {layer!r} gives {tuple(out.shape)} outputs, not maps")
        if not 0 <= channel < out.shape[1]:
            raise ValueError(f"layer {layer!r} has channels 0..{out.shape[1] - 1}, not {channel}")
        maps = out[:, channel].detach()  # N x h x w
        n, _, w = maps.shape
        if positions is None:
            flat = maps.flatten(1).argmax(dim=1)
            positions = torch.stack((flat // w, flat % w), dim=1)
        rows, cols = positions[:, 0], positions[:, 1]
        values = maps[torch.arange(n), rows, cols]
        seed = torch.zeros_like(out)
        seed[torch.arange(n), channel, rows, cols] = values
        (grad,) = torch.autograd.grad(out, x, grad_outputs=seed)
    return grad.detach(), values, positions


# -- receptive fields ------------------------------------------------------------------------


def _positive_state(model: nn.Module, dtype: torch.dtype) -> dict[str, Tensor]:
    """Parameters and buffers that make every convolution an average over its window and every
    batch norm the identity."""
    state: dict[str, Tensor] = {}
    for path, m in model.named_modules():
        prefix = f"{path}." if path else ""
        if isinstance(m, nn.Conv2d):
            state[prefix + "weight"] = torch.full(
                m.weight.shape, 1.0 / m.weight[0].numel(), dtype=dtype
            )
            if m.bias is not None:
                state[prefix + "bias"] = torch.zeros(m.bias.shape, dtype=dtype)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            c = m.num_features
            state[prefix + "running_mean"] = torch.zeros(c, dtype=dtype)
            state[prefix + "running_var"] = torch.ones(c, dtype=dtype)
            if m.affine:
                state[prefix + "weight"] = torch.ones(c, dtype=dtype)
                state[prefix + "bias"] = torch.zeros(c, dtype=dtype)
    return state


def _avg_pool_like(m: nn.MaxPool2d) -> nn.AvgPool2d:
    if _first(m.dilation) != 1:
        raise ValueError("receptive fields of dilated max pools are not supported")
    return nn.AvgPool2d(m.kernel_size, m.stride, m.padding, ceil_mode=m.ceil_mode)


def receptive_field_boxes(
    model: nn.Module, layer: str, image_size: tuple[int, int], positions: Tensor
) -> list[tuple[int, int, int, int]]:
    """The input pixels that can reach each unit, as boxes clipped to the image.

    Measured, not derived from a table: the support of the gradient of each unit in a copy of
    the network whose convolutions average their windows, whose max pools are average pools
    of the same windows, whose batch norms and local response norms are identities and whose
    ReLUs pass everything down. Every path then carries a positive weight, so the support is
    exactly the set of pixels connected to the unit, for any wiring of convolutions, pools
    and shortcuts. The model itself is left as it was.

    Args:
        model: the network.
        layer: module path of a layer with feature-map outputs.
        image_size: (height, width) of the input.
        positions: K x 2 (row, col) units of that layer.

    Returns:
        one (top, left, bottom, right) box per unit; bottom and right exclusive.
    """
    rows = sorted(set(positions[:, 0].tolist()))
    cols = sorted(set(positions[:, 1].tolist()))
    # A unit's box is (its rows' extent) x (its columns' extent), each depending only on its
    # row or column index, so the units (rows[k], cols[k]) give all extents in one batch.
    k = max(len(rows), len(cols))
    units = torch.tensor(
        [(rows[min(i, len(rows) - 1)], cols[min(i, len(cols) - 1)]) for i in range(k)]
    )
    # A pixel at the edge of the field reaches the unit through one tap of each window, with
    # weight about 1/3 per 3x3 conv: 3**-60 ~ 1e-29 still holds in float32 (smallest normal
    # 1e-38); deeper networks (ResNet-110 and up) need float64's range.
    depth = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    dtype = torch.float32 if depth <= 60 else torch.float64
    x = torch.ones(k, 3, *image_size, dtype=dtype, requires_grad=True)
    replace = {nn.MaxPool2d: _avg_pool_like, nn.LocalResponseNorm: lambda _m: nn.Identity()}
    state = _positive_state(model, dtype)
    with deconvnet(model), _swapped(model, replace), torch.enable_grad():
        out = _forward_to(model, x, layer, state)
        seed = torch.zeros_like(out)
        seed[torch.arange(k), :, units[:, 0], units[:, 1]] = 1.0
        (grad,) = torch.autograd.grad(out, x, grad_outputs=seed)
    support = grad.abs().sum(dim=1) > 0  # k x H x W
    row_extent = {r: _extent(support[i].any(dim=1)) for i, r in enumerate(units[:, 0].tolist())}
    col_extent = {c: _extent(support[i].any(dim=0)) for i, c in enumerate(units[:, 1].tolist())}
    boxes = []
    for r, c in positions.tolist():
        top, bottom = row_extent[r]
        left, right = col_extent[c]
        boxes.append((top, left, bottom, right))
    return boxes


def _extent(mask: Tensor) -> tuple[int, int]:
    idx = mask.nonzero().flatten()
    if idx.numel() == 0:
        return 0, mask.numel()
    return int(idx[0]), int(idx[-1]) + 1


# -- the top activations of a dataset --------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TopUnit:
    """One of a channel's strongest units over a dataset, projected to pixel space."""

    index: int  # the image's position in the dataset
    label: str  # its class name
    activation: float
    position: tuple[int, int]  # (row, col) in the layer's map
    box: tuple[int, int, int, int]  # receptive field: top, left, bottom, right (exclusive)
    image: Tensor  # uint8 3 x H x W, the image as the network saw it (resized)
    projections: dict[str, Tensor]  # method -> float 3 x H x W projection, in the order asked

    @property
    def projection(self) -> Tensor:
        """The projection by the first (or only) method."""
        return next(iter(self.projections.values()))


@dataclass(frozen=True, eq=False)
class ChannelProjections:
    """A channel's top images, strongest first (one row of ZF's Fig. 2)."""

    layer: str
    channel: int
    map_size: tuple[int, int]
    units: tuple[TopUnit, ...]
    methods: tuple[str, ...] = ("deconvnet",)  # the projections' methods


@torch.inference_mode()
def _channel_maxima(
    net: Network, images: Tensor, layer: str, batch_size: int, prepared: bool
) -> tuple[Tensor, Tensor]:
    """Per image and channel, the largest activation and its flat position: two N x C."""
    values, where = [], []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size]
        x = net.normalize(batch if prepared else net.prepare(batch))
        out = _forward_to(net.model, x, layer).flatten(2)  # N x C x (h * w)
        v, i = out.max(dim=2)
        values.append(v)
        where.append(i)
    return torch.cat(values), torch.cat(where)


def deconv_top_images(
    net: Network,
    images: Tensor,
    labels: Tensor,
    classes: Sequence[str],
    layer: str,
    channels: Sequence[int] | None = None,
    *,
    top: int = 9,
    strongest: int = 4,
    batch_size: int = 50,
    prepared: bool = False,
    methods: Sequence[str] = ("deconvnet",),
) -> list[ChannelProjections]:
    """Zeiler and Fergus's Fig. 2 for some channels of a layer.

    For each channel: the `top` images whose largest activation in that channel is highest,
    that activation's projection to pixel space by each of `methods`, and its receptive field.

    Args:
        net: the network (`load_network`).
        images: uint8 N x 3 x H x W, any size (`net.prepare` makes them `net.image_size`).
        labels: int64 N, indices into `classes`.
        classes: the dataset's class names.
        layer: a module path or conv label ("conv5", "features.12", "layer3").
        channels: feature maps to show; default the `strongest` ones (largest activation).
        top: images per channel (9 in the paper).
        strongest: how many channels to pick when `channels` is None.
        batch_size: images per forward pass of the search.
        prepared: the images are already as the network sees them (`net.prepare` of each,
            e.g. photos of mixed sizes prepared one by one), and are not prepared again.
        methods: "deconvnet", "guided", "saliency" (see the module docstring): one, or
            several to compare on the same units.

    Raises:
        ValueError: unknown layer, a layer without feature maps, a channel out of range, an
            unknown or repeated method.
    """
    methods = tuple(check_method(m) for m in methods)
    if not methods or len(set(methods)) != len(methods):
        raise ValueError(f"name one or more different methods, got {methods}")
    model = net.model.eval()
    layer = resolve_layer(model, layer, net.image_size[0])
    if images.shape[0] == 0:
        raise ValueError("no images to search")

    def seen(index: Tensor | slice) -> Tensor:
        return images[index] if prepared else net.prepare(images[index])

    c, h, w = _check_called_once(model, layer, net.normalize(seen(slice(0, 1))))
    values, where = _channel_maxima(net, images, layer, batch_size, prepared)
    if channels is None:
        channels = values.amax(dim=0).topk(min(strongest, c)).indices.sort().values.tolist()
    for ch in channels:
        if not 0 <= ch < c:
            raise ValueError(f"layer {layer!r} has channels 0..{c - 1}, not {ch}")
    chosen = []
    for ch in channels:
        best = values[:, ch].topk(min(top, values.shape[0])).indices
        flat = where[best, ch]
        chosen.append((ch, best, torch.stack((flat // w, flat % w), dim=1)))
    # Receptive fields depend only on the unit's position: one pass for all channels.
    all_positions = torch.cat([positions for _, _, positions in chosen])
    boxes = dict(
        zip(
            map(tuple, all_positions.tolist()),
            receptive_field_boxes(model, layer, net.image_size, all_positions),
            strict=True,
        )
    )
    results = []
    for ch, best, positions in chosen:
        pixels = seen(best)
        x = net.normalize(pixels)
        projected = {m: project(model, x, layer, ch, positions, method=m) for m in methods}
        act = projected[methods[0]][1]
        units = tuple(
            TopUnit(
                index=int(i),
                label=str(classes[int(labels[i])]),
                activation=float(act[k]),
                position=(int(p[0]), int(p[1])),
                box=boxes[(int(p[0]), int(p[1]))],
                image=pixels[k],
                projections={m: projected[m][0][k] for m in methods},
            )
            for k, (i, p) in enumerate(zip(best.tolist(), positions, strict=True))
        )
        results.append(ChannelProjections(layer, int(ch), (h, w), units, methods))
    return results


def spread_subset(n: int, limit: int | None) -> Tensor:
    """`limit` positions spread evenly over range(n) (all of them when limit is None or >= n):
    every class of a dataset stored class by class is searched, and reruns pick the same."""
    if limit is None or limit >= n:
        return torch.arange(n)
    if limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    return torch.unique(torch.linspace(0, n - 1, limit).round().long())
