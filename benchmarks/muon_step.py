"""Muon's orthogonalisation, side by side: one Newton-Schulz call per filter bank against one per
stack of banks of the same shape (what cnnlab.train.muon does since 2026-12-07).

For each network: its filter banks as Muon sees them (outputs x inputs * kh * kw), random
momenta in their place, then (a) `orthogonalize` on each bank in turn and (b) the optimizer's
stacked path, alternating (a, b, a, b, ...) so that a busy machine slows both alike. The median
of the rounds is printed with the ratio, and the largest difference between the two results
(they are the same arithmetic, batched). For scale, a whole Muon step (momentum, norms,
update, every group) and a fused SGD step over the same parameters are timed too.

    .venv/bin/python benchmarks/muon_step.py --models resnet20 resnet56
    .venv/bin/python benchmarks/muon_step.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch

from cnnlab.models.registry import create_model
from cnnlab.train import FAST, timing
from cnnlab.train.hardware import describe_machine
from cnnlab.train.muon import orthogonalize, orthogonalize_banks
from cnnlab.train.step import make_optimizer


def _ms(fn: Callable[[], object], device: torch.device) -> float:
    """Milliseconds per call of `fn`, timed as a sized run times its step (cnnlab.train.timing:
    a few untimed calls, then at least 2 s)."""
    sync = (lambda _: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda _: None)
    return timing.measure(lambda _: fn(), sync) * 1e3


def measure(model: str, device: torch.device, rounds: int) -> dict[str, float]:
    net = create_model(model).to(device)
    banks = [p for p in net.parameters() if p.ndim == 4]
    g = torch.Generator(device=device).manual_seed(0)
    moves = [torch.randn(p.shape, generator=g, device=device) for p in banks]

    def one_by_one() -> list[torch.Tensor]:
        return [orthogonalize(m.reshape(m.shape[0], -1)).view_as(m) for m in moves]

    def stacked() -> list[torch.Tensor]:
        return orthogonalize_banks(moves)

    difference = max(
        (a - b).abs().max().item() for a, b in zip(one_by_one(), stacked(), strict=True)
    )
    a, b = [], []
    for _ in range(rounds):
        a.append(_ms(one_by_one, device))
        b.append(_ms(stacked, device))
    for p in net.parameters():
        p.grad = torch.randn(p.shape, generator=g, device=device)
    lr = torch.tensor(FAST.lr, device=device)
    muon = make_optimizer(net, FAST, lr)
    sgd = torch.optim.SGD(net.parameters(), lr=FAST.lr, momentum=0.9, nesterov=True, fused=True)
    return {
        "banks": len(banks),
        "shapes": len({m.shape for m in moves}),
        "one_by_one_ms": statistics.median(a),
        "stacked_ms": statistics.median(b),
        "difference": difference,
        "muon_step_ms": _ms(muon.step, device),
        "sgd_step_ms": _ms(sgd.step, device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per side")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(describe_machine(device))
    print(
        f"{'model':10} {'banks':>5} {'shapes':>6} {'one by one':>11} {'stacked':>9} {'ratio':>6}"
        f" {'max diff':>9} {'Muon step':>10} {'SGD step':>9}"
    )
    for model in args.models:
        r = measure(model, device, args.rounds)
        print(
            f"{model:10} {r['banks']:5d} {r['shapes']:6d} {r['one_by_one_ms']:9.2f}ms"
            f" {r['stacked_ms']:7.2f}ms {r['one_by_one_ms'] / r['stacked_ms']:5.2f}x"
            f" {r['difference']:9.1e} {r['muon_step_ms']:8.2f}ms {r['sgd_step_ms']:7.2f}ms"
        )


if __name__ == "__main__":
    main()
