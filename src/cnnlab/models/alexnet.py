"""AlexNet (Krizhevsky, Sutskever and Hinton 2012, "ImageNet Classification with Deep
Convolutional Neural Networks", NIPS 2012, section 3 and Fig. 2).

Five convolutional and three fully connected layers, as published, on a 227 x 227 input:

    layer  kernels                 output         groups  then
    conv1  96 x 11x11, stride 4    55 x 55 x 96   1       ReLU, LRN, max-pool 3x3/2 -> 27
    conv2  256 x 5x5, pad 2        27 x 27 x 256  2       ReLU, LRN, max-pool 3x3/2 -> 13
    conv3  384 x 3x3, pad 1        13 x 13 x 384  1       ReLU
    conv4  384 x 3x3, pad 1        13 x 13 x 384  2       ReLU
    conv5  256 x 3x3, pad 1        13 x 13 x 256  2       ReLU, max-pool 3x3/2 -> 6 x 6 x 256
    fc6    4096                                           ReLU, dropout 0.5
    fc7    4096                                           ReLU, dropout 0.5
    fc8    num_classes

    model    input  params      multiply-adds  paper error, top-1 / top-5
    alexnet  227    60,965,224  724,406,816    40.7 / 18.2  ILSVRC-2012 val, 1 CNN (Table 2)
                                               37.5 / 17.0  ILSVRC-2010 test (Table 1)

`groups=2` is the paper's two-GPU layout (section 3.2): the kernels of conv2, conv4 and conv5
see only the half of the previous layer's maps that sits on their own GPU; conv3 and the fully
connected layers see all of them. The max-pools overlap (3x3 windows, stride 2; section 3.4).

Deviations from the paper:
- Input 227, not the 224 of the paper's text: an 11x11 window at stride 4 gives the paper's
  55 x 55 maps only from 227 ((227 - 11) / 4 + 1 = 55); from 224 it does not tile.
- An adaptive average pool to 6 x 6 (`avgpool`) sits before the classifier. At 227 the map is
  already 6 x 6 and the pool is the identity; it lets other input sizes run (torchvision does
  the same).
- ReLUs are not in-place, so hooks that keep a layer's output (profile, feature visualisation)
  see it as the layer produced it.

layout="torchvision" is torchvision's AlexNet instead, the one-GPU variant of Krizhevsky 2014
("One weird trick", arXiv:1404.5997): 64, 192, 384, 256, 256 kernels, conv1 padded by 2, no
LRN, no groups, dropout before fc6 and fc7 rather than after, 224 input, PyTorch's default
init. Its parameter names are torchvision's (`features.N`, `classifier.N`), so torchvision's
weights load into it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cnnlab.models.registry import Reported, check_choice, register_model

__all__ = ["AlexNet", "alexnet", "local_response_norm"]

LAYOUTS = ("paper", "torchvision")


def local_response_norm(
    size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0
) -> nn.LocalResponseNorm:
    """Local response normalisation with the constants as Krizhevsky et al. write them.

    Section 3.3: b = a / (k + alpha * sum of a^2 over `size` adjacent maps) ** beta, with
    k=2, n=5, alpha=1e-4, beta=0.75. torch's `nn.LocalResponseNorm` divides alpha by the
    window size, (k + alpha / n * sum) ** beta, so we hand it alpha * n (5e-4 for the paper's
    constants) to compute the paper's formula.
    """
    return nn.LocalResponseNorm(size, alpha=alpha * size, beta=beta, k=k)


class AlexNet(nn.Module):
    """Convolutional `features`, `avgpool`, fully connected `classifier` (torchvision's names)."""

    def __init__(self, num_classes: int = 1000, layout: str = "paper") -> None:
        super().__init__()
        check_choice("layout", layout, LAYOUTS)
        if layout == "paper":
            self.features = _paper_features()
            self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
            self.classifier = _paper_classifier(num_classes)
            _init_paper(self)
        else:
            self.features = _torchvision_features()
            self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
            self.classifier = _torchvision_classifier(num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        # N x 256 x 6 x 6 at the card's input size
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def _paper_features() -> nn.Sequential:
    # Flat, indexed by layer, so that a deconvnet can walk it; shapes at 227 x 227.
    return nn.Sequential(
        nn.Conv2d(3, 96, kernel_size=11, stride=4),  # 0 conv1: N x 96 x 55 x 55
        nn.ReLU(),
        local_response_norm(),
        nn.MaxPool2d(kernel_size=3, stride=2),  # 3: N x 96 x 27 x 27
        nn.Conv2d(96, 256, kernel_size=5, padding=2, groups=2),  # 4 conv2: N x 256 x 27 x 27
        nn.ReLU(),
        local_response_norm(),
        nn.MaxPool2d(kernel_size=3, stride=2),  # 7: N x 256 x 13 x 13
        nn.Conv2d(256, 384, kernel_size=3, padding=1),  # 8 conv3: across both GPUs
        nn.ReLU(),
        nn.Conv2d(384, 384, kernel_size=3, padding=1, groups=2),  # 10 conv4
        nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1, groups=2),  # 12 conv5: N x 256 x 13 x 13
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),  # 14: N x 256 x 6 x 6
    )


def _paper_classifier(num_classes: int) -> nn.Sequential:
    # Section 4.2: dropout sets the output of each hidden neuron of fc6 and fc7 to zero with
    # probability 0.5, so it follows their ReLUs.
    return nn.Sequential(
        nn.Linear(256 * 6 * 6, 4096),  # 0 fc6
        nn.ReLU(),
        nn.Dropout(p=0.5),
        nn.Linear(4096, 4096),  # 3 fc7
        nn.ReLU(),
        nn.Dropout(p=0.5),
        nn.Linear(4096, num_classes),  # 6 fc8
    )


def _init_paper(model: AlexNet) -> None:
    # Section 5: weights from N(0, 0.01); biases 1 in conv2, conv4, conv5 and the hidden fully
    # connected layers ("accelerates the early stages of learning by providing the ReLUs with
    # positive inputs"), 0 in the others.
    ones = {
        model.features[4],
        model.features[10],
        model.features[12],
        model.classifier[0],
        model.classifier[3],
    }
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.01)
            nn.init.constant_(m.bias, 1.0 if m in ones else 0.0)


def _torchvision_features() -> nn.Sequential:
    # torchvision.models.AlexNet.features, index for index; shapes at 224 x 224.
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),  # 0: N x 64 x 55 x 55
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),  # 2: N x 64 x 27 x 27
        nn.Conv2d(64, 192, kernel_size=5, padding=2),  # 3
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),  # 5: N x 192 x 13 x 13
        nn.Conv2d(192, 384, kernel_size=3, padding=1),  # 6
        nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),  # 8
        nn.ReLU(),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),  # 10
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),  # 12: N x 256 x 6 x 6
    )


def _torchvision_classifier(num_classes: int) -> nn.Sequential:
    # torchvision drops the inputs of fc6 and fc7, not their outputs.
    return nn.Sequential(
        nn.Dropout(p=0.5),
        nn.Linear(256 * 6 * 6, 4096),  # 1
        nn.ReLU(),
        nn.Dropout(p=0.5),
        nn.Linear(4096, 4096),  # 4
        nn.ReLU(),
        nn.Linear(4096, num_classes),  # 6
    )


@register_model(
    "alexnet",
    family="alexnet",
    paper="Krizhevsky et al. 2012, NIPS",
    input_size=227,
    params=60_965_224,
    macs=724_406_816,
    reported=(
        Reported("ImageNet top-1 val error (%)", 40.7, "Table 2 (ILSVRC-2012, 1 CNN)"),
        Reported("ImageNet top-5 val error (%)", 18.2, "Table 2 (ILSVRC-2012, 1 CNN)"),
        Reported("ImageNet top-1 test error (%)", 37.5, "Table 1 (ILSVRC-2010, CNN)"),
        Reported("ImageNet top-5 test error (%)", 17.0, "Table 1 (ILSVRC-2010, CNN)"),
    ),
    layouts=LAYOUTS,
    notes="Two-GPU layout as groups=2 on conv2/4/5; LRN after conv1 and conv2; 227 input.",
)
def alexnet(num_classes: int = 1000, layout: str = "paper") -> AlexNet:
    """AlexNet as published (layout="paper") or torchvision's one-GPU variant."""
    return AlexNet(num_classes=num_classes, layout=layout)
