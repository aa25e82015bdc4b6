"""Muon: momentum whose update is orthogonalised, for the convolution filters.

Jordan et al. 2024 ("Muon: an optimizer for hidden layers in neural networks",
kellerjordan.github.io/posts/muon) take SGD's (Nesterov) momentum for a weight matrix and
replace it, before the step, by the nearest semi-orthogonal matrix: M = U S V^T becomes
U V^T, every direction the momentum moves in moved by the same amount. airbench (Jordan
2024, airbench94_muon) applies it to a CIFAR network's filters, each filter bank a matrix
of out_channels rows and in_channels * kh * kw columns, and keeps every filter bank at a
fixed norm, sqrt(out_channels), which the batch norm after each convolution makes harmless:
the learning rate is then how far a filter bank turns in one step, relative to its size.
The same here; everything else (biases, batch norm, the last layer) takes plain SGD with
momentum, as before.

    U V^T by a Newton-Schulz iteration (no SVD): X = M / |M|, then five times
    X <- a X + (b A + c A^2) X with A = X X^T, (a, b, c) = (3.4445, -4.7750, 2.0315),
    coefficients chosen (Jordan et al.) for a steep rise near 0: the singular values land
    in about [0.7, 1.2] rather than exactly on 1, which their measurements found harmless.

The optimizer reads its learning rate from a tensor, like the fused SGD it stands in for
(so a CUDA graph step follows the schedule), and each group's `lr_scale` multiplies it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = ["Muon", "orthogonalize", "orthogonalize_banks"]

NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)
NEWTON_SCHULZ_STEPS = 5


def orthogonalize(m: Tensor, steps: int = NEWTON_SCHULZ_STEPS) -> Tensor:
    """An approximately semi-orthogonal matrix with `m`'s singular vectors (U V^T of M).

    `m` is a matrix or a stack of them (..., rows, columns), each orthogonalised on its own:
    one batched product per term instead of one per matrix.
    """
    if m.ndim < 2:
        raise ValueError(
            f"orthogonalize takes a matrix or a stack of them, got shape {tuple(m.shape)}"
        )
    a, b, c = NEWTON_SCHULZ
    x = m.float().reshape(-1, *m.shape[-2:])
    x = x / (x.norm(dim=(1, 2), keepdim=True) + 1e-7)  # every singular value at most 1
    tall = x.shape[1] > x.shape[2]
    if tall:  # iterate on the smaller Gram matrix
        x = x.mT
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x.mT if tall else x).reshape(m.shape).to(m.dtype)


class Muon(torch.optim.Optimizer):
    """SGD with momentum, and Muon for the groups marked `orthogonal`.

    Args:
        params: parameter groups; a group with `orthogonal=True` holds filter banks (each
            parameter's first dimension its outputs), updated by Muon at `lr * lr_scale`
            and kept at norm sqrt(outputs); the others take SGD with momentum and their
            `weight_decay`, as torch.optim.SGD does, at `lr * lr_scale` too.
        lr: a float or a 0-d tensor read at every step (the schedule sets it).
        momentum, nesterov: for every group.
    """

    def __init__(
        self,
        params: Iterable[dict[str, Any]],
        lr: float | Tensor,
        momentum: float = 0.9,
        nesterov: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=0.0,
            orthogonal=False,
            lr_scale=1.0,
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["orthogonal"] and group["weight_decay"]:
                raise ValueError("Muon's filter banks keep a fixed norm: no weight decay on them")

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            rate, momentum = group["lr"] * group["lr_scale"], group["momentum"]  # once a group
            params = [p for p in group["params"] if p.grad is not None]
            moves = []
            for p in params:
                g = p.grad
                if not group["orthogonal"] and group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if "momentum_buffer" not in state:  # as SGD: the first step's gradient itself
                    state["momentum_buffer"] = g.clone()
                else:
                    state["momentum_buffer"].mul_(momentum).add_(g)
                buf = state["momentum_buffer"]
                moves.append(g.add(buf, alpha=momentum) if group["nesterov"] else buf)
            if group["orthogonal"]:
                for p in params:
                    p.mul_(p.shape[0] ** 0.5 / p.norm().clamp_min(1e-12))
                moves = orthogonalize_banks(moves)
            for p, move in zip(params, moves, strict=True):
                p.sub_(move * rate)


def orthogonalize_banks(moves: list[Tensor]) -> list[Tensor]:
    """`orthogonalize` of each filter bank's move as a matrix (outputs x the rest), the banks
    of one shape stacked into one call: resnet20's 19 banks take 6 calls, resnet56's 55 too."""
    by_shape: dict[torch.Size, list[int]] = {}
    for i, move in enumerate(moves):
        by_shape.setdefault(move.shape, []).append(i)
    done: list[Tensor] = list(moves)
    for shape, which in by_shape.items():
        stack = torch.stack([moves[i] for i in which]).reshape(len(which), shape[0], -1)
        for i, o in zip(which, orthogonalize(stack), strict=True):
            done[i] = o.view(shape)
    return done
