"""Fully convolutional form of a classification network, for dense evaluation.

Simonyan & Zisserman 2014, section 3.2: "the fully-connected layers are first converted to
convolutional layers (the first FC layer to a 7 x 7 conv. layer, the last two FC layers to
1 x 1 conv. layers). The resulting fully-convolutional net is then applied to the whole
(uncropped) image. The result is a class score map with the number of channels equal to the
number of classes, and a variable spatial resolution, dependent on the input image size.
Finally, to obtain a fixed-size vector of class scores for the image, the class score map is
spatially averaged (sum-pooled)." He et al. 2015, section 3.4, evaluate ResNets "in the
fully-convolutional form as in [VGG, He et al. 2014]" at several scales.

    network (by structure)                           fully_convolutional(net)
    features, avgpool (k x k), classifier of         FullyConvolutional: the Linear layers as
      Linear/ReLU/Dropout: AlexNet (6 x 6), ZFNet      k x k and 1 x 1 convolutions sharing their
      (6 x 6), VGG (7 x 7), both layouts, with or      weights; avgpool skipped; score map averaged
      without batch norm
    avgpool to 1 x 1, then fc (Linear): ResNet,      the network itself: already fully
      plain, pre-activation, CIFAR ResNets,            convolutional (see below)
      GoogLeNet

For a global-average-pooling network the score map of its linear classifier, applied at every
position of the last feature map, averages to the same scores as the linear layer applied to the
averaged features (the layer is linear, so mean_p(W f_p + b) = W mean_p(f_p) + b): the network
as it is computes the averaged class score map at any input size.

Where the two differ: at the network's own input size (224 for VGG, 227 for AlexNet's paper
layout) the last map is k x k, the adaptive pool is the identity and both give the same
logits. At larger sizes our networks' `avgpool` resamples the map to k x k (torchvision's
behaviour), whereas the fully convolutional form slides the classifier over the map at the
features' stride (32 pixels for VGG) and averages the scores.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["FullyConvolutional", "fully_convolutional"]


class FullyConvolutional(nn.Module):
    """`features`, the classifier as convolutions (`classifier`), the class score map averaged.

    Shares the original network's `features` module and its classifier's weights (the conv
    weights are views of the Linear weights, no copies), so build it after loading weights and
    moving the network to its device.
    For evaluation: dropouts are kept, and are no-ops in eval mode.
    """

    def __init__(self, features: nn.Module, classifier: nn.Sequential, window: tuple[int, int]):
        super().__init__()
        self.features = features
        self.classifier = classifier
        self.window = window  # the feature map the first fully connected layer was built for

    def score_map(self, x: Tensor) -> Tensor:
        """N x num_classes x h x w class scores, one per `window` of the last feature map.

        Raises:
            ValueError: an input too small to give one window.
        """
        f = self.features(x)
        kh, kw = self.window
        if f.shape[2] < kh or f.shape[3] < kw:
            raise ValueError(
                f"a {x.shape[2]}x{x.shape[3]} input gives {f.shape[2]}x{f.shape[3]} feature maps; "
                f"the first fully connected layer, as a {kh}x{kw} convolution, needs at least "
                f"{kh}x{kw}: use inputs at least the network's input size"
            )
        # N x C x H/32 x W/32 for VGG -> N x num_classes x (H/32 - 6) x (W/32 - 6)
        return self.classifier(f)

    def forward(self, x: Tensor) -> Tensor:
        """Class scores (logits) averaged over the score map: N x num_classes."""
        return self.score_map(x).mean(dim=(2, 3))


def fully_convolutional(net: nn.Module) -> nn.Module:
    """The network in fully convolutional form: any input at least its input size, averaged
    class scores out (Simonyan & Zisserman 2014, section 3.2).

    The kind of network is read from its modules, not its name (see the module docstring):
    `features` + `avgpool` (AdaptiveAvgPool2d to k x k) + `classifier` (Linear, ReLU, Dropout)
    is converted; `avgpool` to 1 x 1 + `fc` (Linear) is returned unchanged, since it is already
    fully convolutional.

    Raises:
        TypeError: a network of neither structure, or a classifier with other layers.
    """
    pool = getattr(net, "avgpool", None)
    if not isinstance(pool, nn.AdaptiveAvgPool2d):
        raise TypeError(_unsupported(net, "it has no `avgpool` (nn.AdaptiveAvgPool2d)"))
    size = _pair(pool.output_size)
    if size == (1, 1) and isinstance(getattr(net, "fc", None), nn.Linear):
        return net  # global average pooling, then a linear layer: see the module docstring
    features, classifier = getattr(net, "features", None), getattr(net, "classifier", None)
    if isinstance(features, nn.Module) and isinstance(classifier, nn.Sequential) and size:
        dense = FullyConvolutional(features, _as_convolutions(classifier, size, net), size)
        dense.training = net.training  # its modules are the network's own, in their own mode
        return dense
    raise TypeError(
        _unsupported(
            net,
            "expected `features`, `avgpool` and a `classifier` Sequential, or a "
            "1x1 `avgpool` and a linear `fc`",
        )  # fmt: skip
    )


def _as_convolutions(
    classifier: nn.Sequential, window: tuple[int, int], net: nn.Module
) -> nn.Sequential:
    """The classifier with its first Linear as a window-sized conv and the others as 1x1 convs.

    torch.flatten of N x C x kh x kw features orders the inputs of the first Linear by channel,
    then row, then column, the order of a Conv2d weight's (C, kh, kw) dimensions, so its weight
    (out, C * kh * kw) is the conv weight (out, C, kh, kw) viewed differently.
    """
    layers: list[nn.Module] = []
    first = True
    for i, layer in enumerate(classifier):
        if isinstance(layer, nn.Linear):
            kh, kw = window if first else (1, 1)
            if layer.in_features % (kh * kw):
                raise TypeError(
                    _unsupported(
                        net,
                        f"classifier[{i}] has {layer.in_features} inputs, not a multiple of "
                        f"the {kh}x{kw} pooled map",  # fmt: skip
                    )
                )
            layers.append(_conv_from_linear(layer, layer.in_features // (kh * kw), kh, kw))
            first = False
        elif isinstance(layer, nn.ReLU | nn.Dropout):
            layers.append(layer)
        else:
            raise TypeError(
                _unsupported(
                    net,
                    f"classifier[{i}] is {type(layer).__name__}, expected Linear, ReLU or Dropout",
                )  # fmt: skip
            )
    if first:
        raise TypeError(_unsupported(net, "its classifier has no Linear layer"))
    return nn.Sequential(*layers)


def _conv_from_linear(linear: nn.Linear, channels: int, kh: int, kw: int) -> nn.Conv2d:
    # Built on the meta device (no memory, no initialisation), then given the Linear's tensors.
    conv = nn.Conv2d(
        channels, linear.out_features, (kh, kw), bias=linear.bias is not None, device="meta"
    )
    # Views of the Linear's tensors: the same storage, no copy (detached: for evaluation).
    conv.weight = nn.Parameter(
        linear.weight.detach().view(linear.out_features, channels, kh, kw), requires_grad=False
    )
    if linear.bias is not None:
        conv.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)
    return conv


def _pair(size: object) -> tuple[int, int] | None:
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, int) for s in pair):
        return None  # None entries: the pool keeps that dimension as it is
    return pair


def _unsupported(net: nn.Module, why: str) -> str:
    return f"cannot make {type(net).__name__} fully convolutional: {why}"
