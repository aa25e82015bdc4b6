"""ZFNet (Zeiler and Fergus 2013, "Visualizing and Understanding Convolutional Networks",
arXiv:1311.2901v3 / ECCV 2014, Fig. 3 and section 4).

AlexNet with the changes the deconvnet visualisations suggested (section 4.1): a 7x7 stride-2
first layer instead of 11x11 stride 4, a stride-2 second layer, and dense connections in
layers 3-5 (one GPU, no groups). Each of layers 1 and 2 is conv, ReLU, max-pool 3x3/2, then
contrast normalisation across feature maps, in that order (Fig. 3 caption). Map sizes at
224 x 224, as Fig. 3 gives them:

    layer  kernels              output
    conv1  96 x 7x7, stride 2   110 x 110 x 96  -> max-pool 3x3/2, norm -> 55 x 55 x 96
    conv2  256 x 5x5, stride 2  26 x 26 x 256   -> max-pool 3x3/2, norm -> 13 x 13 x 256
    conv3  384 x 3x3, pad 1     13 x 13 x 384
    conv4  384 x 3x3, pad 1     13 x 13 x 384
    conv5  256 x 3x3, pad 1     13 x 13 x 256   -> max-pool 3x3/2 -> 6 x 6 x 256
    fc6    4096, dropout 0.5
    fc7    4096, dropout 0.5
    fc8    num_classes

    model  input  params      multiply-adds  paper error, top-1 / top-5
    zfnet  224    62,357,608  1,168,032,896  38.4 / 16.5  ImageNet 2012 val, 1 convnet (Table 2)

Deviations and choices the paper leaves open:
- The paper does not give paddings. conv1 is padded by 1 and the max-pools round up
  (`ceil_mode=True`, as Caffe pools) because that is what reproduces the map sizes of Fig. 3:
  (224 + 2 - 7) // 2 + 1 = 110, ceil((110 - 3) / 2) + 1 = 55, (55 - 5) // 2 + 1 = 26,
  ceil((26 - 3) / 2) + 1 = 13, ceil((13 - 3) / 2) + 1 = 6.
- "Contrast normalisation across feature maps" is AlexNet's local response normalisation with
  AlexNet's constants (k=2, n=5, alpha=1e-4, beta=0.75); the paper gives none of its own.
- An adaptive average pool to 6 x 6 (`avgpool`) before the classifier: the identity at 224,
  it lets other input sizes run.
- Not done: the renormalisation of conv filters whose RMS exceeds 0.1 during training
  (section 3.1); it belongs to the training step, not the network.
- ReLUs are not in-place, so hooks see each layer's output unmodified.

`features` is a flat `nn.Sequential` of `nn.MaxPool2d` and the other layers, indexed as below,
so that a deconvnet can walk it layer by layer and record the pooling switches.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cnnlab.models.alexnet import local_response_norm
from cnnlab.models.registry import Reported, register_model

__all__ = ["ZFNet", "zfnet"]


class ZFNet(nn.Module):
    """Convolutional `features`, `avgpool`, fully connected `classifier` (as AlexNet's)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        # Shapes at 224 x 224 (Fig. 3).
        self.features = nn.Sequential(
            nn.Conv2d(3, 96, kernel_size=7, stride=2, padding=1),  # 0 conv1: N x 96 x 110 x 110
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),  # 2: N x 96 x 55 x 55
            local_response_norm(),
            nn.Conv2d(96, 256, kernel_size=5, stride=2),  # 4 conv2: N x 256 x 26 x 26
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),  # 6: N x 256 x 13 x 13
            local_response_norm(),
            nn.Conv2d(256, 384, kernel_size=3, padding=1),  # 8 conv3
            nn.ReLU(),
            nn.Conv2d(384, 384, kernel_size=3, padding=1),  # 10 conv4
            nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),  # 12 conv5: N x 256 x 13 x 13
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),  # 14: N x 256 x 6 x 6
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        # Section 3.1: dropout in the fully connected layers 6 and 7, rate 0.5.
        self.classifier = nn.Sequential(
            nn.Linear(256 * 6 * 6, 4096),  # 0 fc6
            nn.ReLU(),
            nn.Dropout(p=0.5),
            nn.Linear(4096, 4096),  # 3 fc7
            nn.ReLU(),
            nn.Dropout(p=0.5),
            nn.Linear(4096, num_classes),  # 6 fc8
        )
        # Section 3.1: weights "initialized to 10^-2", biases 0; read as weights drawn from
        # N(0, 0.01) as in AlexNet, since equal constant weights would not break symmetry.
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.normal_(m.weight, mean=0.0, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        # N x 256 x 6 x 6 at 224
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


@register_model(
    "zfnet",
    family="zfnet",
    paper="Zeiler & Fergus 2013, arXiv:1311.2901",
    input_size=224,
    params=62_357_608,
    macs=1_168_032_896,
    reported=(
        Reported("ImageNet top-1 val error (%)", 38.4, "Table 2 (1 convnet as per Fig. 3)"),
        Reported("ImageNet top-5 val error (%)", 16.5, "Table 2 (1 convnet as per Fig. 3)"),
    ),
    notes="Fig. 3 map sizes need conv1 padding 1 and ceil-mode max-pools; LRN as AlexNet's.",
)
def zfnet(num_classes: int = 1000) -> ZFNet:
    """ZFNet as in Fig. 3 of Zeiler and Fergus 2013."""
    return ZFNet(num_classes=num_classes)
