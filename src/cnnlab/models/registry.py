"""The model registry: one name per published network, each with a card of checked numbers.

A model file registers its builders with `register_model`, giving the card: the paper, the
input size the paper used, the exact parameter and multiply-add counts of the built network
(at the card's input size and class count; tests rebuild every model and compare), and the
results the paper reports with the table they come from.

Multiply-adds (MACs) count one per multiply-accumulate of convolutions and fully connected
layers, the convention of the ResNet paper's Table 1 and of torchvision ("FLOPs" there are
multiply-adds). `torch.utils.flop_counter` counts two per multiply-add.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

__all__ = [
    "ModelCard",
    "ModelOption",
    "Reported",
    "UnknownModelError",
    "builder_options",
    "create_model",
    "list_models",
    "model_card",
    "register_model",
]


@dataclass(frozen=True)
class Reported:
    """One result as the paper reports it."""

    metric: str  # e.g. "CIFAR-10 test error (%)", "ImageNet top-1 val error (%)"
    value: float
    source: str  # where in the paper: "Table 6", "Table 2 (10-crop)"


@dataclass(frozen=True)
class ModelOption:
    """A builder option a paper ablates: the values it takes and where the paper has them.

    `cnnlab models --options NAME` lists them with the parameter count of each value.
    """

    name: str  # the builder's keyword, e.g. "shortcut_variant"
    values: tuple[object, ...]  # every value it accepts, the default first; () for a number
    source: str  # where the paper has them: "He et al. 2016, Table 1 and Fig. 2"
    note: str = ""  # what a number means, for an option without a list of values


@dataclass(frozen=True)
class ModelCard:
    """What the registry knows of a network, checked by the tests against the built model."""

    name: str
    family: str  # "alexnet", "vgg", "resnet", "resnet-cifar", ...
    paper: str  # "He et al. 2015, arXiv:1512.03385"
    input_size: int  # side of the square input the paper used
    num_classes: int  # the class count the numbers below are for
    params: int  # exact, at num_classes
    macs: int  # exact multiply-adds for one image at input_size
    reported: tuple[Reported, ...] = ()
    layouts: tuple[str, ...] = ("paper",)  # "torchvision" where a torchvision twin exists
    notes: str = ""
    options: tuple[ModelOption, ...] = ()  # the ablations the builder takes, besides layout

    @property
    def reported_error(self) -> Reported | None:
        """The first reported error, for tables."""
        return self.reported[0] if self.reported else None


class UnknownModelError(KeyError):
    """Raised for a model name the registry does not hold; the message names the closest ones."""

    def __str__(self) -> str:
        return str(self.args[0])


_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_CARDS: dict[str, ModelCard] = {}


def register_model(
    name: str,
    *,
    family: str,
    paper: str,
    input_size: int,
    params: int,
    macs: int,
    num_classes: int = 1000,
    reported: tuple[Reported, ...] = (),
    layouts: tuple[str, ...] = ("paper",),
    notes: str = "",
    options: tuple[ModelOption, ...] = (),
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that registers a builder under `name` with its card."""

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is registered twice")
        _BUILDERS[name] = builder
        _CARDS[name] = ModelCard(
            name=name,
            family=family,
            paper=paper,
            input_size=input_size,
            num_classes=num_classes,
            params=params,
            macs=macs,
            reported=reported,
            layouts=layouts,
            notes=notes,
            options=options,
        )
        return builder

    return decorate


def _ensure_loaded() -> None:
    # The model files register themselves when imported; importing the package's models
    # subpackage imports them all. Done lazily so `import cnnlab.models.registry` stays cheap.
    import cnnlab.models  # noqa: F401


def _unknown(name: str) -> UnknownModelError:
    close = difflib.get_close_matches(name, _BUILDERS, n=4, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return UnknownModelError(
        f"unknown model {name!r}{hint} (`cnnlab models` lists all {len(_BUILDERS)})"
    )


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted, optionally filtered by an fnmatch pattern ("resnet*")."""
    _ensure_loaded()
    names = sorted(_BUILDERS, key=_natural_key)
    if pattern is None:
        return names
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def model_card(name: str) -> ModelCard:
    """The card of a registered model.

    Raises:
        UnknownModelError: the name is not registered; the message names the closest ones.
    """
    _ensure_loaded()
    if name not in _CARDS:
        raise _unknown(name)
    return _CARDS[name]


def create_model(name: str, **options: object) -> nn.Module:
    """Build a registered network with random weights, or with torchvision's published ones.

    Args:
        name: a registered name (see `list_models`).
        **options: the builder's options, e.g. `num_classes=10`, `shortcut="A"`,
            `layout="torchvision"`; and `weights="IMAGENET1K_V1"` (any name torchvision
            publishes for the network, or "DEFAULT"): torchvision's trained weights in the
            torchvision layout, downloaded on first use, the network in eval mode with
            `net.pretrained` (classes, input statistics, resize and crop) set; see
            `cnnlab.models.pretrained`. `weights=None` is the same as leaving it out.

    Raises:
        UnknownModelError: the name is not registered.
        ValueError: an option the builder does not take, or a value it does not accept;
            the message names the valid ones. With `weights`: a network without published
            weights, a weights name torchvision does not publish for it, a layout or
            num_classes the weights do not fit.
        WeightsFileError: (an OSError) the weights file is missing and cannot be downloaded,
            or cannot be read; the message names the file and the folder it belongs in.
    """
    _ensure_loaded()
    if name not in _BUILDERS:
        raise _unknown(name)
    weights = options.pop("weights", None)
    if weights is not None:
        from cnnlab.models.pretrained import load

        net, _ = load(name, str(weights), **options)
        return net
    builder = _BUILDERS[name]
    accepted = inspect.signature(builder).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    if not takes_any:
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            valid = ", ".join(sorted(accepted)) or "none"
            raise ValueError(f"{name} does not take option(s) {', '.join(unknown)}; valid: {valid}")
    layout = options.get("layout", "paper")
    card = _CARDS[name]
    if layout not in card.layouts:
        raise ValueError(
            f"{name} has no layout {layout!r}; valid: {', '.join(repr(x) for x in card.layouts)}"
        )
    return builder(**options)


def builder_options(name: str) -> dict[str, object]:
    """The options a registered builder takes besides num_classes, with their defaults.

    Raises:
        UnknownModelError: the name is not registered.
    """
    _ensure_loaded()
    if name not in _BUILDERS:
        raise _unknown(name)
    parameters = inspect.signature(_BUILDERS[name]).parameters.values()
    return {
        p.name: p.default
        for p in parameters
        if p.name != "num_classes" and p.default is not inspect.Parameter.empty
    }


def check_choice(option: str, value: object, valid: tuple[object, ...]) -> None:
    """Raise a ValueError naming the valid values when `value` is not one of them."""
    if value not in valid:
        raise ValueError(
            f"{option}={value!r} is not valid; choose one of {', '.join(repr(v) for v in valid)}"
        )


def _natural_key(name: str) -> tuple[object, ...]:
    # "resnet20" < "resnet110": compare digit runs as numbers.
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))
