"""Per-image crops of the ImageNet papers, for images of any size streamed one by one.

Each transform takes one decoded image (uint8, 3 x H x W, any H and W) and a torch.Generator
and returns uint8 3 x size x size; the randomness comes only from the generator, so a sample
seeded by (run seed, step, position) is the same in any worker process and after a resume.

    mode     the papers' training crops                                         recipe
    square   shorter side to 256, the central 256 x 256, a random crop          alexnet2012
             of it and its mirror (Krizhevsky et al. 2012, sections 2 and 4.1)
    scale    shorter side to a random S in [S_min, S_max], a random crop        vgg2014 (256-512),
             and its mirror (Simonyan & Zisserman 2014, section 3.1; He et      resnet2015 (256-480)
             al. 2015, section 3.4)
    area     a patch of 8%..100% of the image's area, aspect ratio 3/4..4/3,    googlenet2014
             resized to the input size, and its mirror (Szegedy et al. 2014,
             section 6)

    lighting: Krizhevsky et al. 2012, section 4.1 ("altering the intensities of the RGB
    channels"): to every pixel add [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T, the eigenvectors p and
    eigenvalues l of the 3 x 3 covariance of the training pixels' RGB values, a_i ~ N(0, 0.1)
    drawn once per image. Used by AlexNet, VGG (section 3.1: "random RGB colour shift") and
    ResNet ("the standard color augmentation in [21]"). Deviation: the shifted pixels are
    rounded back to whole uint8 levels and clipped to 0..255, so that a batch travels as
    uint8 (a quarter of float32's bytes) and the training step stays the CIFAR one.

The evaluation crop (`CenterCrop`) resizes the shorter side to 256 and takes the central
crop: the papers' single-crop figure (e.g. He et al. 2015, Table 3 "10-crop testing" beside
single 224 crops of the 256-resized image).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from cnnlab.data.views import _bilinear, center_crop, resize_shorter

__all__ = ["CROP_MODES", "CenterCrop", "TrainCrop", "pca_colour"]

CROP_MODES = ("square", "scale", "area")
_AREA_TRIES = 10  # patches drawn before falling back to the central square (as torchvision)


def _randint(low: int, high: int, g: torch.Generator) -> int:
    """Uniform integer in [low, high], both included."""
    return int(torch.randint(low, high + 1, (1,), generator=g))


def _uniform(low: float, high: float, g: torch.Generator) -> float:
    return low + (high - low) * float(torch.rand(1, generator=g))


def pca_colour(images: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues (3,) and eigenvectors (3 x 3, one per column) of the RGB covariance.

    Of the pixels of `images` (uint8 N x 3 x H x W, 0..255), in 0..1 units: Krizhevsky et
    al. 2012, section 4.1, "PCA on the set of RGB pixel values throughout the training set".
    """
    x = images.permute(1, 0, 2, 3).reshape(3, -1).to(torch.float64) / 255
    cov = torch.cov(x)
    eigval, eigvec = torch.linalg.eigh(cov)
    return eigval.clamp_min(0).float(), eigvec.float()


@dataclass(frozen=True)
class TrainCrop:
    """One of the papers' random training crops (see the module docstring), then lighting.

    Attributes:
        size: side of the square the network takes (224; 227 for AlexNet's paper layout).
        mode: "square", "scale" or "area".
        scale: (S_min, S_max) of the shorter side for "scale"; (256, 256) for "square".
        area: fraction of the image's area for "area".
        ratio: aspect ratio (width / height) range for "area".
        flip: mirror with probability 1/2.
        lighting: std of the PCA colour noise's coefficients (0.1 in the papers); 0: off.
        eigval, eigvec: the training pixels' colour PCA (see `pca_colour`), for lighting.
    """

    size: int
    mode: str = "scale"
    scale: tuple[int, int] = (256, 256)
    area: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    lighting: float = 0.0
    eigval: tuple[float, ...] = ()
    eigvec: tuple[tuple[float, ...], ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in CROP_MODES:
            raise ValueError(f"crop mode must be one of {', '.join(CROP_MODES)}, got {self.mode!r}")
        if self.size < 1:
            raise ValueError(f"crop size must be at least 1, got {self.size}")
        if self.mode != "area" and not self.size <= self.scale[0] <= self.scale[1]:
            raise ValueError(
                f"crop {self.size} needs the shorter side's range {self.scale} to start at "
                f"{self.size} or more and to increase"
            )
        if self.lighting and len(self.eigval) != 3:
            raise ValueError("lighting needs the training pixels' colour PCA (eigval, eigvec)")

    def __call__(self, img: Tensor, g: torch.Generator) -> Tensor:
        if self.mode == "area":
            img = self._area(img, g)
        else:
            img = resize_shorter(img, _randint(*self.scale, g))
            if self.mode == "square":
                img = center_crop(img, self.scale[0])
            h, w = img.shape[-2:]
            top, left = _randint(0, h - self.size, g), _randint(0, w - self.size, g)
            img = img[:, top : top + self.size, left : left + self.size]
        if self.flip and float(torch.rand(1, generator=g)) < 0.5:
            img = img.flip(-1)
        if self.lighting:
            img = self._lighting(img, g)
        return img.contiguous()

    def _area(self, img: Tensor, g: torch.Generator) -> Tensor:
        h, w = img.shape[-2:]
        for _ in range(_AREA_TRIES):
            target = h * w * _uniform(*self.area, g)
            aspect = _uniform(*self.ratio, g)
            cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < cw <= w and 0 < ch <= h:
                top, left = _randint(0, h - ch, g), _randint(0, w - cw, g)
                patch = img[:, top : top + ch, left : left + cw]
                return _bilinear(patch, (self.size, self.size))
        side = min(h, w)  # no patch fitted: the central square, as a whole
        return _bilinear(center_crop(img, side), (self.size, self.size))

    def _lighting(self, img: Tensor, g: torch.Generator) -> Tensor:
        alpha = torch.randn(3, generator=g) * self.lighting
        shift = torch.tensor(self.eigvec) @ (alpha * torch.tensor(self.eigval))  # RGB, 0..1
        out = img.to(torch.float32) + (255 * shift)[:, None, None]
        return out.round_().clamp_(0, 255).to(torch.uint8)


@dataclass(frozen=True)
class CenterCrop:
    """Shorter side to `resize`, then the central `crop` x `crop`: the single-crop test."""

    resize: int
    crop: int

    def __post_init__(self) -> None:
        if not 1 <= self.crop <= self.resize:
            raise ValueError(
                f"a centre crop of {self.crop} needs a resize of at least {self.crop}, "
                f"got {self.resize}"
            )

    def __call__(self, img: Tensor, g: torch.Generator | None = None) -> Tensor:
        return center_crop(resize_shorter(img, self.resize), self.crop).contiguous()
