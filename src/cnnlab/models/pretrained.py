"""torchvision's published ImageNet weights, loaded into our layout="torchvision" networks.

`create_model(name, weights="IMAGENET1K_V1")`, or `load(name, weights)` here, builds our
torchvision-layout network (its parameter names are torchvision's; the model tests check that
a torchvision state dict loads strictly and gives the same logits) and loads the state dict
that torchvision publishes for its twin, through torchvision's own weights API:
`torchvision.models.get_model_weights(name)[weights].get_state_dict(check_hash=True)`. That
reads the file from torch's hub cache,

    torch.hub.get_dir()/checkpoints/<file name of the URL>
    ($TORCH_HOME/hub/checkpoints; TORCH_HOME defaults to ~/.cache/torch)

and downloads it there first if it is missing, checking its SHA-256 against the prefix in the
file name (torchvision's naming, e.g. resnet18-f37072fd.pth). torch.hub downloads into a
temporary file beside it and moves it into place only when complete and checked, so a failed
download leaves nothing behind. Where there is no network, the error names the file and the
folder: copy the file there and the same call loads it.

What torchvision publishes for our networks (torchvision 0.29; `published(name)` asks the
installed one), with its ImageNet-1K validation accuracy, single 224 crop:

    model                      weights                 top-1 / top-5 acc   resize, crop
    alexnet                    IMAGENET1K_V1           56.52 / 79.07       256, 224
    vgg11 .. vgg19 (and _bn)   IMAGENET1K_V1           69.02 .. 74.22      256, 224
    vgg16                      IMAGENET1K_FEATURES     (no classifier)     256, 224
    googlenet                  IMAGENET1K_V1           69.78 / 89.53       256, 224
    resnet18, resnet34         IMAGENET1K_V1           69.76, 73.31        256, 224
    resnet50/101/152           IMAGENET1K_V1           76.13 .. 78.31      256, 224
                               IMAGENET1K_V2 (DEFAULT) 80.86 .. 82.28      232, 224

"DEFAULT" names the best of them, as in torchvision. The V2 ResNet weights come from
torchvision's 2021 recipe (long schedule, heavy augmentation), not from He et al.; the V1 ones
are torchvision's reproductions of the paper's training (ResNet "v1.5" stride placement, see
resnet.py).

The weights' description comes along as a `Pretrained` (classes, input statistics, resize and
crop), returned by `load` and attached to the network as `net.pretrained`.

GoogLeNet: torchvision trained its weights on inputs scaled to mean 0.5, std 0.5 and turns on
`transform_input` whenever it loads them, which re-normalises ImageNet-normalised input. We do
the same (googlenet.py, `transform_input=True`), so all these networks take input normalised
with `Pretrained.mean` and `Pretrained.std`.
"""

from __future__ import annotations

import contextlib
import io
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from cnnlab.models.registry import create_model, list_models, model_card

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

__all__ = [
    "TORCHVISION_NAMES",
    "Pretrained",
    "WeightsFileError",
    "info",
    "load",
    "models_with_weights",
    "published",
]

# Our registered name -> the torchvision builder whose weights fit our layout="torchvision"
# network (the same names; kept as a table so that the list of networks with weights is
# written down, not guessed from torchvision).
TORCHVISION_NAMES: dict[str, str] = {
    name: name
    for name in (
        "alexnet",
        "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
        "googlenet",
        "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    )
}  # fmt: skip

# torchvision's builders give their models this many outputs when the weights name no classes
# (vgg16's IMAGENET1K_FEATURES), so the file's classifier has this shape.
_DEFAULT_CLASSES = 1000


class WeightsFileError(OSError):
    """The weights file can be neither found, downloaded nor read; the message says where it
    goes and what to do."""


@dataclass(frozen=True)
class Pretrained:
    """torchvision's published weights for one of our networks, and how to feed them images.

    The input pipeline is torchvision's `weights.transforms()`: resize the shorter side to
    `resize_size`, take the centre `crop_size` square, scale to 0..1 and normalise with `mean`
    and `std`.

    Attributes:
        model: our registered name, e.g. "resnet50".
        weights: torchvision's name of the weights, e.g. "IMAGENET1K_V2" ("DEFAULT" resolved).
        torchvision_name: the full name, e.g. "ResNet50_Weights.IMAGENET1K_V2".
        url: where torchvision downloads them from.
        file: where torchvision keeps them (torch.hub.get_dir()/checkpoints/<url's file name>).
        classes: the names of the outputs, in order (ImageNet-1K's 1000 categories), or None
            for weights without a trained classifier (vgg16's IMAGENET1K_FEATURES).
        mean: per-channel input mean, 0..1 units.
        std: per-channel input standard deviation, 0..1 units.
        resize_size: the shorter side is resized to this many pixels...
        crop_size: ...then the centre crop_size x crop_size square is the network's input.
        interpolation: of the resize, a torchvision InterpolationMode value ("bilinear"),
            antialiased.
        top1_error: torchvision's reported ImageNet-1K validation error (%, one 224 crop),
            None where it reports none.
        top5_error: the same, top-5.
    """

    model: str
    weights: str
    torchvision_name: str
    url: str
    file: Path
    classes: tuple[str, ...] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize_size: int
    crop_size: int
    interpolation: str
    top1_error: float | None
    top5_error: float | None

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the network's input: the crop."""
        return self.crop_size, self.crop_size

    def describe(self) -> str:
        """One line for figure titles and logs: the weights and their input pipeline."""
        return (
            f"{self.torchvision_name}: shorter side resized to {self.resize_size}, "
            f"centre {self.crop_size}x{self.crop_size} crop"
        )

    def prepare(self, images: Tensor) -> Tensor:
        """Resize and centre-crop as torchvision's `weights.transforms()` does, before it scales
        and normalises (torchvision.transforms.functional.resize and center_crop, the same
        calls with the same arguments).

        Args:
            images: uint8 3 x H x W or N x 3 x H x W, any size.

        Returns:
            uint8 (N x) 3 x crop_size x crop_size, the pixels the network sees; normalise
            them with `mean` and `std` (cnnlab.data.Normalize) to get its input.
        """
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        x = TF.resize(
            images, [self.resize_size], interpolation=InterpolationMode(self.interpolation),
            antialias=True,
        )  # fmt: skip
        return TF.center_crop(x, [self.crop_size])


def models_with_weights() -> list[str]:
    """Our model names for which torchvision publishes weights."""
    return list(TORCHVISION_NAMES)


def _weights_enum(name: str) -> type[WeightsEnum]:
    if name not in list_models() and Path(name).exists():
        raise ValueError(
            f"torchvision's weights go with a model name (e.g. alexnet, resnet50), not with a "
            f"checkpoint or a file ({name})"
        )
    model_card(name)  # UnknownModelError for a name the registry does not hold
    if name not in TORCHVISION_NAMES:
        raise ValueError(
            f"{name} has no published weights: torchvision publishes weights only for "
            f"{', '.join(TORCHVISION_NAMES)} (models with a torchvision layout)"
        )
    from torchvision.models import get_model_weights

    return get_model_weights(TORCHVISION_NAMES[name])


def published(name: str) -> tuple[str, ...]:
    """The names of the weights torchvision publishes for our model `name` ("DEFAULT" aside).

    Raises:
        UnknownModelError: not a registered model.
        ValueError: a model without published weights; the message names those with.
    """
    return tuple(member.name for member in _weights_enum(name))


def info(name: str, weights: str) -> Pretrained:
    """The description of torchvision's weights `weights` for our model `name`; nothing is
    downloaded or read.

    Args:
        name: a model in `models_with_weights()`.
        weights: a name torchvision publishes for it ("IMAGENET1K_V1", "DEFAULT", or the full
            "ResNet50_Weights.IMAGENET1K_V1").

    Raises:
        UnknownModelError: not a registered model.
        ValueError: a model without published weights, or a weights name torchvision does not
            publish for it; the messages name the valid ones.
    """
    enum = _weights_enum(name)
    key = str(weights).removeprefix(enum.__name__ + ".")
    if key not in enum.__members__:
        names = [m.name for m in enum]
        raise ValueError(
            f"torchvision publishes no weights {weights!r} for {name}; choose one of "
            f"{', '.join(names)} or DEFAULT (= {enum['DEFAULT'].name})"
        )
    w = enum[key]
    t = w.transforms()
    categories = w.meta.get("categories")
    metrics = w.meta.get("_metrics", {}).get("ImageNet-1K", {})
    return Pretrained(
        model=name,
        weights=w.name,
        torchvision_name=f"{enum.__name__}.{w.name}",
        url=w.url,
        file=Path(torch.hub.get_dir()) / "checkpoints" / Path(w.url).name,
        classes=None if categories is None else tuple(categories),
        mean=tuple(float(v) for v in t.mean),
        std=tuple(float(v) for v in t.std),
        resize_size=int(t.resize_size[0]),
        crop_size=int(t.crop_size[0]),
        interpolation=t.interpolation.value,
        top1_error=_error(metrics.get("acc@1")),
        top5_error=_error(metrics.get("acc@5")),
    )


def _error(accuracy: float | None) -> float | None:
    if accuracy is None or not math.isfinite(accuracy):
        return None
    return round(100.0 - accuracy, 3)


def load(
    name: str, weights: str, *, progress: bool = True, **options: object
) -> tuple[nn.Module, Pretrained]:
    """Our layout="torchvision" network `name` with torchvision's published weights.

    The file is read from torch's hub cache, downloaded there on first use (see the module
    docstring). The network is returned in eval mode, on the CPU, with `net.pretrained` set
    to the description that is also returned.

    Args:
        name: a model in `models_with_weights()`.
        weights: a name torchvision publishes for it (see `info`).
        progress: torchvision's download progress bar (on stderr).
        **options: the builder's other options; `layout` can only be "torchvision",
            `num_classes` only the weights' class count. googlenet gets `transform_input=True`
            unless told otherwise, as in torchvision.

    Raises:
        UnknownModelError: not a registered model.
        ValueError: a model without published weights, an unknown weights name, or options
            the weights do not fit; one line naming the valid choices.
        WeightsFileError: the file is missing and cannot be downloaded (the message names it
            and the folder to put it in), or it cannot be read, or it does not fit.
    """
    meta = info(name, weights)
    layout = options.pop("layout", "torchvision")
    if layout != "torchvision":
        raise ValueError(
            f"torchvision's weights fit layout='torchvision', not layout={layout!r}; "
            "leave layout out (weights imply it)"
        )
    expected = len(meta.classes) if meta.classes is not None else _DEFAULT_CLASSES
    num_classes = options.get("num_classes", expected)
    if num_classes != expected:
        raise ValueError(
            f"{meta.torchvision_name} has {expected} outputs, not num_classes={num_classes}; "
            "leave num_classes out (to fine-tune on other classes, replace the last layer "
            "after loading)"
        )
    if name == "googlenet":
        options.setdefault("transform_input", True)
    net = create_model(name, layout="torchvision", **options)
    state = _read_state_dict(meta, progress)
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        # torch's message opens with "Error(s) in loading state_dict for X:"; the next line
        # says which keys or shapes.
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else _first_line(e)
        raise WeightsFileError(
            f"{meta.file} does not fit {name} (layout='torchvision'): {detail[:200]}; "
            "delete it to download it again"
        ) from None
    net.pretrained = meta
    return net.eval(), meta


def _read_state_dict(meta: Pretrained, progress: bool) -> dict[str, Tensor]:
    weights = _weights_enum(meta.model)[meta.weights]
    present = meta.file.is_file()
    try:
        # torch.hub announces a download on stdout before it tries; keep stdout for results
        # (predict's lines) and a failure to one line. Its progress bar goes to stderr.
        with contextlib.redirect_stdout(io.StringIO()):
            state = weights.get_state_dict(
                progress=progress, check_hash=True, map_location="cpu", weights_only=True
            )
    except Exception as e:  # whatever the failure, one line that names the file and its cause
        if not meta.file.is_file():
            # URLError, HTTPError, timeouts, a failed hash check: torch.hub removed its
            # temporary file, so the folder holds nothing from this attempt.
            raise WeightsFileError(
                f"cannot download {meta.torchvision_name} from {meta.url} "
                f"({_first_line(e)}); without a network, copy {meta.file.name} into "
                f"{meta.file.parent}, where torchvision looks for it"
            ) from e
        raise WeightsFileError(
            f"cannot read {meta.file} as a state dict ({_first_line(e)}); "
            "delete it to download it again"
        ) from e
    if progress and not present:
        size = meta.file.stat().st_size / 2**20
        print(f"downloaded {meta.url} ({size:.1f} MiB) to {meta.file}", file=sys.stderr)
    return state


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
