"""The four-layer CIFAR-10 network of AlexNet's Fig. 1 (Krizhevsky, Sutskever and Hinton 2012,
NIPS 2012, section 3.1): ReLU against tanh.

"A four-layer convolutional neural network with ReLUs (solid line) reaches a 25% training
error rate on CIFAR-10 six times faster than an equivalent network with tanh neurons (dashed
line)." The paper gives no exact architecture. Ours is the four-layer CIFAR-10 network that
Krizhevsky published with cuda-convnet in the same period, `layers-18pct.cfg` ("18% error on
CIFAR-10 in 20 minutes", code.google.com/p/cuda-convnet, example-layers/), without its two
response-normalisation layers:

    layer  kernels              output        then
    conv1  32 x 5x5, pad 2      32 x 32 x 32  act, max-pool 3x3/2 -> 16 x 16
    conv2  32 x 5x5, pad 2      16 x 16 x 32  act, avg-pool 3x3/2 -> 8 x 8
    conv3  64 x 5x5, pad 2       8 x  8 x 64  act, avg-pool 3x3/2 -> 4 x 4
    fc     num_classes (from 4 x 4 x 64 = 1,024)

    model     params   MACs         paper (section 3.1, Fig. 1)
    convnet4  89,578   12,298,240   tanh needs 6x the epochs of ReLU to reach 25% training error

`activation="relu"` (default) or `"tanh"`: the only difference between the two networks.

Choices, where the paper says nothing:
- Response normalisation (`rnorm1`, `rnorm2` in the cfg) is left out: section 3.3 introduces
  it as a separate ingredient, and it divides by the squared activity, so it would act
  differently on bounded tanh outputs than on ReLU outputs; without it the two networks
  differ in their activation alone.
- Pools as cuda-convnet sizes them: 3x3 windows at stride 2 covering the whole map, the last
  one partly outside (`ceil_mode=True`): 32 -> 16 -> 8 -> 4, as the cfg's `outputsX=0` gives.
  cuda-convnet applies conv1's ReLU after its max-pool; both orders give the same output,
  since max-pooling commutes with any increasing function (ReLU and tanh alike).
- Initialisation, fair to both: every conv weight from N(0, gain^2 / fan_in) with the gain
  of its activation (`torch.nn.init.calculate_gain`: sqrt(2) for ReLU, He et al. 2015b; 5/3
  for tanh), the scale that keeps each layer's activations at a steady size for that
  activation, so neither network starts with vanishing or exploding signals; the last layer
  (no activation) with gain 1; biases 0. The paper's N(0, 0.01) with biases of 1 (section
  5) is for AlexNet, and its biases of 1 help ReLUs only ("providing the ReLUs with positive
  inputs").
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cnnlab.models.registry import Reported, check_choice, register_model

__all__ = ["ACTIVATIONS", "ConvNet4", "convnet4"]

ACTIVATIONS = ("relu", "tanh")

# cuda-convnet's layers-18pct.cfg, conv1 .. conv3: (filters, kernel size).
CONVS = ((32, 5), (32, 5), (64, 5))


def _activation(name: str) -> nn.Module:
    # Not in-place, so that hooks keeping a layer's output see it as the layer produced it.
    return nn.ReLU() if name == "relu" else nn.Tanh()


class ConvNet4(nn.Module):
    """Three 5x5 convs, each followed by its activation and a 3x3/2 pool, and a linear layer."""

    def __init__(self, num_classes: int = 10, activation: str = "relu") -> None:
        super().__init__()
        check_choice("activation", activation, ACTIVATIONS)
        self.activation = activation
        (w1, k1), (w2, k2), (w3, k3) = CONVS
        self.conv1 = nn.Conv2d(3, w1, k1, padding=k1 // 2)
        self.act1 = _activation(activation)
        self.pool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = nn.Conv2d(w1, w2, k2, padding=k2 // 2)
        self.act2 = _activation(activation)
        self.pool2 = nn.AvgPool2d(3, stride=2, ceil_mode=True)
        self.conv3 = nn.Conv2d(w2, w3, k3, padding=k3 // 2)
        self.act3 = _activation(activation)
        self.pool3 = nn.AvgPool2d(3, stride=2, ceil_mode=True)
        self.fc = nn.Linear(w3 * 4 * 4, num_classes)
        self._init(activation)

    def _init(self, activation: str) -> None:
        gain = nn.init.calculate_gain(activation)  # sqrt(2) for relu, 5/3 for tanh
        for conv in (self.conv1, self.conv2, self.conv3):
            nn.init.normal_(conv.weight, std=gain / conv.weight[0].numel() ** 0.5)
            nn.init.zeros_(conv.bias)
        nn.init.normal_(self.fc.weight, std=1 / self.fc.in_features**0.5)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.act1(self.conv1(x)))  # N x 32 x 16 x 16
        x = self.pool2(self.act2(self.conv2(x)))  # N x 32 x 8 x 8
        x = self.pool3(self.act3(self.conv3(x)))  # N x 64 x 4 x 4
        return self.fc(torch.flatten(x, 1))

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"


@register_model(
    "convnet4",
    family="convnet4",
    paper="Krizhevsky et al. 2012, NIPS",
    input_size=32,
    num_classes=10,
    params=89_578,
    macs=12_298_240,
    reported=(
        Reported(
            "times faster to 25% CIFAR-10 training error, ReLU vs tanh", 6.0, "section 3.1, Fig. 1"
        ),
    ),
    notes="The paper gives no exact architecture: ours is cuda-convnet's layers-18pct "
    "(Krizhevsky's four-layer CIFAR-10 net: 5x5 convs of 32, 32, 64 filters, each with a 3x3/2 "
    "pool, and a linear layer) without its response normalisation; activation='relu' or "
    "'tanh'; init N(0, gain^2 / fan_in) with the activation's gain.",
)
def convnet4(num_classes: int = 10, activation: str = "relu") -> ConvNet4:
    return ConvNet4(num_classes=num_classes, activation=activation)
