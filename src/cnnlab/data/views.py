"""Test-time views of one image, as the ImageNet papers evaluated their networks.

    method   views per image    source
    center   1                  the usual single-crop figure: shorter side to 256, centre 224
    10crop   10                 Krizhevsky et al. 2012, section 4.1; He et al. 2015, section 3.4
    dense    2 per scale        Simonyan & Zisserman 2014, section 3.2 (and 4.2 for several
                                scales); He et al. 2015, section 3.4, scales 224 .. 640

Every function takes one decoded image, a uint8 tensor C x H x W (3 x H x W for RGB) of any
size, and returns a uint8 tensor V x C x h x w of views of one size; the network's class
posteriors are then averaged over the views (cnnlab.train.testtime). An image smaller than the
crop is not an error: the shorter side is resized first, up or down.

Resizing keeps the aspect ratio (the shorter side becomes `size`, the longer one
floor(size * long / short)), bilinear with antialiasing: on the CPU by torch's uint8 kernel
(the fixed-point path torchvision's `Resize(size, antialias=True)` takes too), elsewhere in
float32 rounded back to uint8, within one grey level of it. Crops are plain slices; a centred
crop starts at floor((H - crop) / 2), as Caffe's test-time crop (torchvision's `CenterCrop`
rounds half to even, one pixel off for some odd differences).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "HE2015_SCALES",
    "METHODS",
    "TestTime",
    "center_view",
    "dense_views",
    "parse_scales",
    "resize_shorter",
    "ten_crop_views",
]

METHODS = ("center", "10crop", "dense")

# He et al. 2015, section 3.4: "images are resized such that the shorter side is in
# {224, 256, 384, 480, 640}".
HE2015_SCALES = (224, 256, 384, 480, 640)


def _check_image(img: Tensor) -> None:
    if not isinstance(img, Tensor) or img.dim() != 3 or img.dtype != torch.uint8:
        what = f"{img.dtype} tensor of shape {tuple(img.shape)}" if isinstance(img, Tensor) else img
        raise ValueError(f"expected one uint8 image of shape C x H x W, got a {what}")
    if img.shape[1] == 0 or img.shape[2] == 0:
        raise ValueError(f"the image is empty: shape {tuple(img.shape)}")


def _check_size(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive number of pixels, got {value!r}")


def _check_crop(resize: int, crop: int) -> None:
    _check_size("resize", resize)
    _check_size("crop", crop)
    if crop > resize:
        raise ValueError(
            f"crop {crop} is larger than resize {resize}: crops are cut from the image resized "
            f"so that its shorter side is {resize}"
        )


def resize_shorter(img: Tensor, size: int) -> Tensor:
    """The image rescaled isotropically so that its shorter side is `size` pixels.

    VGG's "isotropically rescaled to a pre-defined smallest image side" (Simonyan & Zisserman
    2014, section 3.2); AlexNet's first step, "rescaled the image such that the shorter side was
    of length 256" (Krizhevsky et al. 2012, section 2). Bilinear with antialiasing; the longer
    side becomes floor(size * long / short). An image already of that size is returned as is.
    torch's uint8 kernel on the CPU, float32 rounded to the nearest grey level elsewhere.

    Args:
        img: uint8 C x H x W.
        size: the shorter side after resizing, in pixels.

    Returns:
        uint8 C x H' x W' with min(H', W') == size.
    """
    _check_image(img)
    _check_size("size", size)
    _, h, w = img.shape
    # Integer arithmetic for the floor: no 384.99999 from a float division.
    new_h, new_w = (size, size * w // h) if h <= w else (size * h // w, size)
    if (new_h, new_w) == (h, w):
        return img
    return _bilinear(img, (new_h, new_w))


def _bilinear(img: Tensor, size: tuple[int, int]) -> Tensor:
    """Antialiased bilinear resize of a uint8 C x H x W image to `size` (H', W')."""
    if img.device.type == "cpu":
        # torch's uint8 kernel: 4x faster than float32 here (1.1 against 4.6 ms for a 500 x 375
        # image), within one grey level of it; what decodes and crops in the loader workers.
        return F.interpolate(img[None], size, mode="bilinear", align_corners=False, antialias=True)[
            0
        ]
    x = F.interpolate(img[None].float(), size, mode="bilinear", align_corners=False, antialias=True)
    # The triangle filter's weights are non-negative and sum to 1: the result stays in 0..255.
    return x[0].round_().to(torch.uint8)


def _crop(img: Tensor, top: int, left: int, size: int) -> Tensor:
    return img[:, top : top + size, left : left + size]


def center_crop(img: Tensor, size: int) -> Tensor:
    """The central `size` x `size` of a C x H x W image (top-left at floor((H - size) / 2))."""
    _, h, w = img.shape
    return _crop(img, (h - size) // 2, (w - size) // 2, size)


def center_view(img: Tensor, resize: int = 256, crop: int = 224) -> Tensor:
    """One view: the central `crop` x `crop` patch of the image resized to shorter side `resize`.

    The single-crop evaluation most later papers report (e.g. Szegedy et al. 2014, Table 3,
    "1 crop"); the centre patch is the fifth of AlexNet's ten. The crop starts at
    floor((H' - crop) / 2), floor((W' - crop) / 2).

    Returns:
        uint8 1 x C x crop x crop.

    Raises:
        ValueError: crop larger than resize, or not a uint8 C x H x W image.
    """
    _check_crop(resize, crop)
    return center_crop(resize_shorter(img, resize), crop)[None].contiguous()


def ten_crop_views(img: Tensor, resize: int = 256, crop: int = 224) -> Tensor:
    """Ten views: five `crop` x `crop` patches and their horizontal reflections.

    Krizhevsky et al. 2012, section 4.1: "extracting five 224 x 224 patches (the four corner
    patches and the center patch) as well as their horizontal reflections (hence ten patches in
    all), and averaging the predictions made by the network's softmax layer on the ten patches".
    The patches are cut from the 256 x 256 image of section 2 ("rescaled the image such that
    the shorter side was of length 256, and then cropped out the central 256x256 patch"), so
    the corners are those of the central `resize` x `resize` square, not of the whole
    rectangle (torchvision's `TenCrop` after `Resize(256)` takes the rectangle's corners). He
    et al. 2015, section 3.4, use "the standard 10-crop testing [Krizhevsky et al.]".

    Order: top-left, top-right, bottom-left, bottom-right, centre, then the same five mirrored
    (view 5 + i is view i flipped left to right). With resize 256 and crop 224 the corners start
    at rows and columns 0 and 32 of the square, the centre at 16.

    Returns:
        uint8 10 x C x crop x crop.

    Raises:
        ValueError: crop larger than resize, or not a uint8 C x H x W image.
    """
    _check_crop(resize, crop)
    square = center_crop(resize_shorter(img, resize), resize)
    far = resize - crop  # offset of the right and bottom patches
    five = torch.stack(
        [
            _crop(square, 0, 0, crop),  # top-left
            _crop(square, 0, far, crop),  # top-right
            _crop(square, far, 0, crop),  # bottom-left
            _crop(square, far, far, crop),  # bottom-right
            center_crop(square, crop),
        ]
    )
    return torch.cat([five, five.flip(-1)])


def dense_views(img: Tensor, scale: int) -> Tensor:
    """Two views for dense evaluation: the whole image at shorter side `scale`, and its mirror.

    Simonyan & Zisserman 2014, section 3.2: the image is "isotropically rescaled to a
    pre-defined smallest image side, denoted as Q", the fully convolutional network "is then
    applied to the whole (uncropped) image", and "We also augment the test set by horizontal
    flipping of the images; the soft-max class posteriors of the original and flipped images
    are averaged". Run them through `cnnlab.models.dense.fully_convolutional(net)`.

    Returns:
        uint8 2 x C x H' x W' with min(H', W') == scale: the image, then its mirror.

    Raises:
        ValueError: scale not a positive integer, or not a uint8 C x H x W image.
    """
    _check_size("scale", scale)
    resized = resize_shorter(img, scale)
    return torch.stack([resized, resized.flip(-1)])


def parse_scales(text: str) -> tuple[int, ...]:
    """Test scales from a comma-separated list of shorter sides, e.g. "224,256,384,480,640".

    Raises:
        ValueError: an empty list, an entry that is not a positive integer, or a repeated one
            (each scale counts once in the average).
    """
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(p == "" for p in parts):
        raise ValueError(
            f"--scales needs comma-separated pixel sizes like 224,256,384; got {text!r}"
        )
    scales = []
    for p in parts:
        if not (p.isascii() and p.isdigit()) or int(p) < 1:
            raise ValueError(f"--scales: {p!r} is not a positive number of pixels (in {text!r})")
        scales.append(int(p))
    _check_scales(tuple(scales))
    return tuple(scales)


def _check_scales(scales: tuple[int, ...]) -> None:
    if not scales:
        raise ValueError("dense evaluation needs at least one scale")
    for s in scales:
        _check_size("scale", s)
    repeated = sorted({s for s in scales if scales.count(s) > 1})
    if repeated:
        raise ValueError(f"scale {repeated[0]} is repeated in {','.join(map(str, scales))}")


@dataclass(frozen=True)
class TestTime:
    """A test-time method: how each image becomes views whose class posteriors are averaged.

    Build one with `TestTime.center()`, `TestTime.ten_crop()`, `TestTime.dense(scales)` or,
    from command-line values, `TestTime.parse(name, resize, crop, scales)`.

    Attributes:
        name: "center", "10crop" or "dense".
        resize: shorter side before cropping (center, 10crop); None for dense.
        crop: side of the square crops (center, 10crop), the network's input size; None for
            dense.
        scales: shorter sides the whole image is evaluated at (dense); () otherwise.
    """

    __test__ = False  # a name that starts with "Test", not a pytest class

    name: str
    resize: int | None = None
    crop: int | None = None
    scales: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.name not in METHODS:
            raise ValueError(
                f"test-time method must be one of {', '.join(METHODS)}, got {self.name!r}"
            )
        if self.name == "dense":
            if self.resize is not None or self.crop is not None:
                raise ValueError("dense evaluation takes scales, not resize and crop")
            _check_scales(tuple(self.scales))
            object.__setattr__(self, "scales", tuple(self.scales))
        else:
            if self.scales:
                raise ValueError(f"scales apply to dense evaluation only, not to {self.name}")
            if self.resize is None or self.crop is None:
                raise ValueError(f"{self.name} needs both resize and crop")
            _check_crop(self.resize, self.crop)

    @classmethod
    def center(cls, resize: int = 256, crop: int = 224) -> TestTime:
        """One centre crop (see `center_view`)."""
        return cls("center", resize, crop)

    @classmethod
    def ten_crop(cls, resize: int = 256, crop: int = 224) -> TestTime:
        """Krizhevsky et al.'s ten crops (see `ten_crop_views`)."""
        return cls("10crop", resize, crop)

    @classmethod
    def dense(cls, scales: Sequence[int] = HE2015_SCALES) -> TestTime:
        """Dense evaluation of the whole image at each scale and its mirror (`dense_views`)."""
        return cls("dense", scales=tuple(scales))

    @classmethod
    def parse(
        cls, name: str, resize: int = 256, crop: int = 224, scales: str | None = None
    ) -> TestTime:
        """The method from command-line values: `--test-time`, and `--scales` for dense.

        `resize` and `crop` are ignored by dense; `scales` (e.g. "224,256,384") is an error
        for the others, and defaults to He et al.'s 224,256,384,480,640 for dense.
        """
        if name not in METHODS:
            raise ValueError(f"--test-time must be one of {', '.join(METHODS)}, got {name!r}")
        if name == "dense":
            return cls.dense(HE2015_SCALES if scales is None else parse_scales(scales))
        if scales is not None:
            raise ValueError(f"--scales applies to --test-time dense only, not to {name}")
        return cls(name, resize, crop)

    @property
    def views_per_image(self) -> int:
        """How many views of each image the posteriors are averaged over."""
        return {"center": 1, "10crop": 10}.get(self.name, 2 * len(self.scales))

    def views(self, img: Tensor) -> list[Tensor]:
        """The views of one uint8 C x H x W image, as stacks of one size each.

        center and 10crop give one stack (1 or 10 x C x crop x crop); dense one stack of two
        per scale (the image and its mirror), of different sizes.
        """
        if self.name == "center":
            return [center_view(img, self.resize, self.crop)]
        if self.name == "10crop":
            return [ten_crop_views(img, self.resize, self.crop)]
        return [dense_views(img, s) for s in self.scales]

    def describe(self) -> str:
        """One line for reports: what the views are, and where the method comes from."""
        if self.name == "center":
            return f"center: one {self.crop}x{self.crop} centre crop at shorter side {self.resize}"
        if self.name == "10crop":
            return (
                f"10crop: the 4 corner and the centre {self.crop}x{self.crop} crops of the central "
                f"{self.resize}x{self.resize} and their mirrors (Krizhevsky et al. 2012, 4.1)"
            )
        return (
            f"dense: whole image at shorter side {','.join(map(str, self.scales))} and its mirror, "
            "fully convolutional, posteriors averaged (Simonyan & Zisserman 2014, 3.2)"
        )
