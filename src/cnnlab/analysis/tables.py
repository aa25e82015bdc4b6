"""Tables made from the model cards: `cnnlab models`, `cnnlab models --options` and the
README's model table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from cnnlab.models.registry import builder_options, create_model, model_card


def _si(n: int) -> str:
    return f"{n / 1e9:.2f} G" if n >= 1e9 else f"{n / 1e6:.1f} M"


def models_table(names: list[str], *, markdown: bool = False) -> str:
    """One row per model: family, input, parameters, multiply-adds, paper, reported result."""
    header = ("model", "family", "input", "params", "MACs", "paper", "reported (paper)")
    rows = []
    for name in names:
        card = model_card(name)
        rep = card.reported_error
        reported = f"{rep.value:g} {rep.metric}, {rep.source}" if rep else ""
        rows.append(
            (
                name,
                card.family,
                f"{card.input_size}x{card.input_size}",
                f"{card.params:,}",
                _si(card.macs),
                card.paper,
                reported,
            )
        )
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    return _aligned(header, rows, right={3, 4})


def option_params(name: str, **options: object) -> int:
    """Parameters of a registered network with `options`, at its card's class count, counted on a
    build on the meta device (shapes only: no memory, no init arithmetic)."""
    card = model_card(name)
    with torch.device("meta"):
        net = create_model(name, **{"num_classes": card.num_classes, **options})
    return sum(p.numel() for p in net.parameters())


def options_table(name: str) -> str:
    """The options of a network, a row per value with its parameter count.

    Each value is built with the other options at their defaults, on the meta device. The
    values are the card's (`ModelCard.options`, its layouts); an option of the builder that the
    card does not list shows its default only.
    """
    card = model_card(name)
    defaults = builder_options(name)
    base = option_params(name)
    header = ("option", "value", "params", "change", "source")
    rows: list[tuple[str, ...]] = []

    def add(option: str, values: tuple[object, ...], source: str) -> None:
        for k, value in enumerate(values):
            default = value == defaults.get(option)
            params = base if default else option_params(name, **{option: value})
            rows.append(
                (
                    option if k == 0 else "",
                    f"{value}{' (default)' if default else ''}",
                    f"{params:,}",
                    "" if default else f"{params - base:+,}",
                    source if k == 0 else "",
                )
            )

    listed: set[str] = set()
    for opt in card.options:
        listed.add(opt.name)
        if opt.values:
            add(opt.name, opt.values, opt.source)
        else:
            rows.append((opt.name, "a number", "", "", opt.note))
            rows.append(("", "", "", "", opt.source))
    if len(card.layouts) > 1:
        listed.add("layout")
        add("layout", card.layouts, "see the model's module docstring")
    for option, default in defaults.items():
        if option not in listed:
            rows.append((option, f"{default} (default)", f"{base:,}", "", "values not on the card"))
    title = f"{name}: parameters for {card.num_classes} classes, each value with the other options "
    title += "at their defaults"
    if not rows:
        return f"{title}\n(no options besides num_classes)"
    return f"{title}\n\n{_aligned(header, rows, right={2, 3})}"


def _aligned(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
    """A plain-text table: columns padded to their widest cell, `right` ones right-aligned."""
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    out = []
    for k, r in enumerate((header, *rows)):
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def update_readme(path: str | Path, names: list[str]) -> bool:
    """Rewrite the model table between the README's MODELS markers; True if it changed."""
    path = Path(path)
    text = path.read_text()
    start, end = "<!-- MODELS -->\n", "<!-- /MODELS -->"
    if start not in text or end not in text:
        raise ValueError(f"{path} has no {start.strip()} ... {end} markers")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    new = f"{head}{start}{models_table(names, markdown=True)}\n{end}{tail}"
    path.write_text(new)
    return new != text
