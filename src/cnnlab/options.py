"""Options as the command line writes them: `-O KEY=VALUE` and model specs `name:key=value,...`.

The lowest layer of the package (no torch, nothing of cnnlab imported), so that measuring a
network (`cnnlab summary`, `cnnlab compare`) and training one read options the same way
without the one importing the other.

    parse_options(["shortcut=B", "width=2"])      {"shortcut": "B", "width": 2}
    parse_spec("googlenet:factorize=5x5")         ("googlenet", {"factorize": "5x5"})
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["parse_options", "parse_spec"]

# A comma starts a new option only where KEY= follows; other commas are inside a tuple value,
# so "conv_stack:kernels=3,3,3,channels=64" is kernels=(3, 3, 3) and channels=64.
_NEXT_OPTION = re.compile(r",(?=[A-Za-z_][A-Za-z0-9_]*=)")


def parse_options(
    items: Sequence[str], what: str = "model option", example: str = "shortcut=B"
) -> dict[str, object]:
    """["shortcut=B", "width=2"] -> {"shortcut": "B", "width": 2} (ints, floats, true/false).

    A value with commas is a tuple: "scale_range=256,480" -> {"scale_range": (256, 480)}.

    Raises:
        ValueError: an item that is not KEY=VALUE; the message shows `example`.
    """
    options: dict[str, object] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} {item!r} is not KEY=VALUE (e.g. {example})")
        options[key] = _parse_value(text)
    return options


def parse_spec(spec: str) -> tuple[str, dict[str, object]]:
    """A model with its options, "name" or "name:key=value,key=value", as a name and a dict.

    "googlenet:factorize=5x5" -> ("googlenet", {"factorize": "5x5"}); values are read as by
    `parse_options`, and a comma not followed by KEY= belongs to a tuple value.

    Raises:
        ValueError: an empty name, or an option that is not KEY=VALUE.
    """
    name, sep, rest = spec.partition(":")
    if not name:
        raise ValueError(f"model spec {spec!r} has no model name (e.g. googlenet:factorize=5x5)")
    if not sep:
        return name, {}
    items = _NEXT_OPTION.split(rest) if rest else [""]
    options = parse_options(items, f"in model spec {spec!r}, option", "googlenet:factorize=5x5")
    return name, options


def _parse_value(text: str) -> object:
    if "," in text:  # a pair or a list: scale_range=256,480
        return tuple(_parse_value(t) for t in text.split(","))
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
