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

__all__ = ["Muon", "orthogonalize"]

NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)
NEWTON_SCHULZ_STEPS = 5


def orthogonalize(m: Tensor, steps: int = NEWTON_SCHULZ_STEPS) -> Tensor:
    """An approximately semi-orthogonal matrix with `m`'s singular vectors (U V^T of M)."""
    if m.ndim != 2:
        raise ValueError(f"orthogonalize takes a matrix, got shape {tuple(m.shape)}")
    a, b, c = NEWTON_SCHULZ
    x = m.float()
    x = x / (x.norm() + 1e-7)  # every singular value at most 1
    tall = x.shape[0] > x.shape[1]
    if tall:  # iterate on the smaller Gram matrix
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).to(m.dtype)


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
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if not group["orthogonal"] and group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if "momentum_buffer" not in state:  # as SGD: the first step's gradient itself
                    state["momentum_buffer"] = g.clone()
                else:
                    state["momentum_buffer"].mul_(momentum).add_(g)
                buf = state["momentum_buffer"]
                g = g.add(buf, alpha=momentum) if group["nesterov"] else buf
                if group["orthogonal"]:
                    rows = p.shape[0]
                    p.mul_(rows**0.5 / p.norm().clamp_min(1e-12))
                    g = orthogonalize(g.reshape(rows, -1)).view_as(p)
                p.sub_(g * rate)
