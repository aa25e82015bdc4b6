"""Layer responses: the standard deviation of each 3x3 layer's output (He et al. 2015, Fig. 7).

He et al. 2015 (arXiv:1512.03385), section 4.2, "Analysis of Layer Responses": "Fig. 7 shows
the standard deviations (std) of the layer responses. The responses are the outputs of each
3x3 layer, after BN and before other nonlinearity (ReLU/addition)." Fig. 7 draws one std per
layer, by layer index (top) and sorted in descending order (bottom), for plain and residual
networks of 20, 56 and 110 layers on CIFAR-10; the finding is that "ResNets have generally
smaller responses than their plain counterparts", and that deeper ResNets have smaller ones.

Which layers: every 3x3 convolution, each read at the output of the batch norm its output goes
into. In a basic block those are bn1 (before its ReLU) and bn2 (before the addition, and before
the ReLU in a plain block); the stem's 3x3 conv and its bn1 count as layer 1. In a bottleneck
block only the 3x3 (conv2, bn2) counts. A network with a 3x3 conv whose output is not batch
normalised straight away (pre-activation units, AlexNet, VGG) has no such responses and is
refused.

The std of a layer, exactly (the paper does not define it): for each channel c, the population
standard deviation of its response y[n, c, i, j] over the images n and all positions (i, j);
the layer's std is the mean of these over its channels,

    std(layer) = mean_c sqrt( mean_{n,i,j} (y[n,c,i,j] - mean_{n,i,j} y[n,c,i,j])^2 ).

Why per channel: batch norm standardises each channel over exactly these axes, the images and
the positions (Ioffe and Szegedy 2015, section 3.2, for convolutional layers), and then scales
it by its own gamma; a channel's std is therefore what the trained network chose for the size
of that channel's response, which is the paper's argument (residual functions "might be
generally closer to zero"). One std over the whole tensor would also count the differences
between the channels' means (the betas), offsets rather than responses. The networks are in
eval mode (batch norm with its running statistics), as at test time. Sums are accumulated in
float64 batch by batch (Chan et al.'s pairwise update), so the result does not depend on the
batch size.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from cnnlab.analysis.features import Network, load_network

__all__ = [
    "RESPONSE_IMAGES",
    "LayerResponses",
    "mean_responses",
    "response_layers",
    "response_std",
    "run_label",
    "run_responses",
]

RESPONSE_IMAGES = 1000  # test images by default: the std of ~10^5 values per channel and up


@dataclass(frozen=True)
class LayerResponses:
    """The std of each 3x3 layer's response of one network (or the mean over seeds).

    Attributes:
        name: the legend entry, e.g. "resnet56" or "resnet20-B".
        model: the registered model name.
        layers: the batch norms read, module paths in forward order (layer index 1, 2, ...).
        std: per layer, the mean over its channels of each channel's std (module docstring).
        images: how many images the statistics are over.
        networks: how many networks (seeds) `std` is the mean of.
    """

    name: str
    model: str
    layers: tuple[str, ...]
    std: tuple[float, ...]
    images: int
    networks: int = 1

    def ranked(self) -> tuple[float, ...]:
        """The stds in descending order (Fig. 7, bottom)."""
        return tuple(sorted(self.std, reverse=True))


def response_layers(model: nn.Module, x: Tensor) -> list[str]:
    """The batch norms that take a 3x3 convolution's output directly, in forward order.

    Args:
        model: the network.
        x: a normalised input batch (one image is enough), N x 3 x H x W.

    Raises:
        ValueError: no 3x3 convolution, or one whose output does not go straight into a
            batch norm (the message names it).
    """
    convs = {m: path for path, m in model.named_modules() if _is_3x3(m)}
    norms = {
        m: path
        for path, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    }
    called: list[str] = []  # 3x3 convs, in forward order
    found: dict[str, str] = {}  # conv path -> batch norm path
    last: list[Tensor | None] = [None]  # the output of the last 3x3 conv

    def after_conv(m: nn.Module, _inputs: object, output: Tensor) -> None:
        called.append(convs[m])
        last[0] = output

    def before_norm(m: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        if last[0] is not None and inputs[0] is last[0]:
            found[called[-1]] = norms[m]
        last[0] = None

    handles = [m.register_forward_hook(after_conv) for m in convs]
    handles += [m.register_forward_pre_hook(before_norm) for m in norms]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    if not called:
        raise ValueError(f"{type(model).__name__} has no 3x3 convolution")
    missing = [c for c in called if c not in found]
    if missing:
        raise ValueError(
            f"the 3x3 conv {missing[0]} of {type(model).__name__} is not followed by a batch "
            "norm: layer responses (He et al. 2015, Fig. 7) are read after BN, so they need "
            "conv-BN layers (not pre-activation units, nor networks without batch norm)"
        )
    return [found[c] for c in called]


def _is_3x3(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (3, 3)


@torch.inference_mode()
def response_std(
    net: Network, images: Tensor, *, batch_size: int = 100
) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """The std of each 3x3 layer's response over `images` (the module docstring's definition).

    Args:
        net: the network (`load_network`), run in eval mode.
        images: uint8 N x 3 x H x W, any size (`net.prepare` makes them `net.image_size`).
        batch_size: images per forward pass.

    Returns:
        (the batch norms' module paths in forward order, the std of each).

    Raises:
        ValueError: no images, or a network without conv-BN 3x3 layers (`response_layers`).
    """
    if images.shape[0] == 0:
        raise ValueError("no images to measure the responses on")
    model = net.model.eval()
    layers = response_layers(model, net.normalize(net.prepare(images[:1])))
    # Per layer: count, per-channel mean and sum of squared deviations (float64).
    stats: dict[str, tuple[int, Tensor, Tensor]] = {}

    # Called in the batch norm's forward hook, before the in-place ReLU that may follow it.
    def record(path: str, output: Tensor) -> None:
        y = output.detach().double().transpose(0, 1).flatten(1)  # C x (N * h * w)
        n_b = y.shape[1]
        mean_b = y.mean(dim=1)
        m2_b = (y - mean_b[:, None]).square().sum(dim=1)
        if path not in stats:
            stats[path] = (n_b, mean_b, m2_b)
            return
        n_a, mean_a, m2_a = stats[path]
        n = n_a + n_b
        delta = mean_b - mean_a
        m2 = m2_a + m2_b + delta.square() * (n_a * n_b / n)
        stats[path] = (n, mean_a + delta * (n_b / n), m2)

    handles = [
        model.get_submodule(path).register_forward_hook(
            lambda _m, _i, o, path=path: record(path, o)
        )
        for path in layers
    ]
    try:
        for start in range(0, images.shape[0], batch_size):
            model(net.normalize(net.prepare(images[start : start + batch_size])))
    finally:
        for h in handles:
            h.remove()
    std = tuple(float((stats[p][2] / stats[p][0]).sqrt().mean()) for p in layers)
    return tuple(layers), std


def run_label(run: str | Path, net: Network) -> str:
    """A run's name for a legend: its config.json's model and option values ("resnet20-B"),
    as the experiments name runs; the network's model name where there is no config.json."""
    folder = Path(run) if Path(run).is_dir() else Path(run).parent
    config = folder / "config.json"
    if config.is_file():
        c = json.loads(config.read_text())
        options = c.get("model_options") or {}
        return "-".join([str(c.get("model", net.name)), *(str(v) for v in options.values())])
    return net.name


def run_responses(
    runs: Sequence[str | Path],
    images: Tensor,
    *,
    names: Sequence[str] | None = None,
    batch_size: int = 100,
) -> list[LayerResponses]:
    """The layer responses of several run folders (or checkpoints) on the same images.

    Args:
        runs: run folders or checkpoint files written by `cnnlab train` (or model names:
            random weights).
        images: uint8 N x 3 x H x W, e.g. test images.
        names: legend entries; default `run_label` of each, with the folder's name added
            where two runs would have the same one.
        batch_size: images per forward pass.
    """
    out = []
    for k, run in enumerate(runs):
        net = load_network(run)
        layers, std = response_std(net, images, batch_size=batch_size)
        name = names[k] if names is not None else run_label(run, net)
        out.append(LayerResponses(name, net.name, layers, std, images.shape[0]))
    if names is None:
        labels = [r.name for r in out]
        out = [
            replace(r, name=f"{r.name} ({_folder_name(run)})") if labels.count(r.name) > 1 else r
            for r, run in zip(out, runs, strict=True)
        ]
    return out


def _folder_name(run: str | Path) -> str:
    """The run folder's name; for a model name, "random weights"."""
    path = Path(run)
    if not path.exists():
        return "random weights"
    return path.name if path.is_dir() else path.parent.name


def mean_responses(responses: Sequence[LayerResponses], name: str) -> LayerResponses:
    """The layer-by-layer mean of several networks' responses (seeds of one run), each
    weighted by the number of networks it already averages.

    Raises:
        ValueError: none given, or networks whose layers differ.
    """
    if not responses:
        raise ValueError("no responses to average")
    first = responses[0]
    if any(r.layers != first.layers for r in responses):
        raise ValueError(f"{name}: the networks' layers differ; cannot average their responses")
    networks = sum(r.networks for r in responses)
    std = tuple(
        math.fsum(r.networks * r.std[k] for r in responses) / networks
        for k in range(len(first.layers))
    )
    return LayerResponses(name, first.model, first.layers, std, first.images, networks)
