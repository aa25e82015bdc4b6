"""Tables made from the model cards: `cnnlab models` and the README's model table."""

from __future__ import annotations

from pathlib import Path

from cnnlab.models.registry import model_card


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
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    right = {3, 4}
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
