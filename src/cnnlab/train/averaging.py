"""An exponential moving average of the weights, evaluated and saved in their place.

    average = WeightAverage(net, decay=0.999)
    average.update(net, step)        # after each optimizer step
    evaluate(average.net, ...)       # the averaged network, BatchNorm statistics included

w_avg <- d_t * w_avg + (1 - d_t) * w after every step, for the parameters and the floating
BatchNorm buffers alike, with d_t = min(decay, (1 + t) / (10 + t)) so that the first steps,
whose weights are far from trained, do not dominate a long memory (the warm-up of
TensorFlow's ExponentialMovingAverage). An average of the iterates goes back to Polyak &
Juditsky 1992; GoogLeNet used one for its final model (Szegedy et al. 2014, section 6), and
short CIFAR schedules use an exponential one (e.g. airbench).

The update is a foreach lerp on the weights' device: no host sync, one kernel per group.

Lookahead (Zhang et al. 2019, arXiv:1907.08610, Algorithm 1) averages the other way round: it
keeps slow weights beside the trained (fast) ones, and every k steps moves the slow weights
alpha of the way to the fast ones and restarts the fast ones from there:

    lookahead = Lookahead(net, steps=5, alpha=0.5)
    lookahead.update(net, step)      # after each optimizer step; acts on every k-th

The trained network itself is what is evaluated and saved (after the last update of a run
whose length is a multiple of k, fast and slow are the same). Momentum is kept across the
restart (the paper's default), and only the parameters take part; BatchNorm's running
statistics follow the fast weights.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Lookahead", "WeightAverage"]


def _floating_state(net: nn.Module) -> list[Tensor]:
    return [t for t in net.state_dict(keep_vars=True).values() if t.is_floating_point()]


class WeightAverage:
    """The averaged copy of a network (`net`), in eval mode, never trained directly."""

    def __init__(self, net: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"the weight average's decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.net = copy.deepcopy(net).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    def factor(self, step: int) -> float:
        """d_t of step `step` (0-based)."""
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, net: nn.Module, step: int) -> None:
        """Move the average towards `net`'s weights after optimizer step `step`."""
        mine, theirs = _floating_state(self.net), _floating_state(net)
        torch._foreach_lerp_(mine, [t.detach() for t in theirs], 1 - self.factor(step))
        for a, b in zip(self.net.buffers(), net.buffers(), strict=True):
            if not a.is_floating_point():
                a.copy_(b)  # BatchNorm's num_batches_tracked

    def state_dict(self) -> dict[str, Any]:
        return self.net.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state)


class Lookahead:
    """Slow weights that every `steps` optimizer steps take `alpha` of the fast weights' way."""

    def __init__(self, net: nn.Module, steps: int, alpha: float) -> None:
        if steps < 1 or not 0 < alpha <= 1:
            raise ValueError(
                f"lookahead needs steps >= 1 and alpha in (0, 1], got {steps}, {alpha}"
            )
        self.steps, self.alpha = steps, alpha
        self.slow = [p.detach().clone() for p in net.parameters()]

    @torch.no_grad()
    def update(self, net: nn.Module, step: int) -> None:
        """After optimizer step `step` (0-based): on every `steps`-th, sync slow and fast."""
        if (step + 1) % self.steps:
            return
        fast = [p.detach() for p in net.parameters()]
        torch._foreach_lerp_(self.slow, fast, self.alpha)
        torch._foreach_copy_(fast, self.slow)

    def state_dict(self) -> dict[str, Any]:
        return {"slow": self.slow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for mine, saved in zip(self.slow, state["slow"], strict=True):
            mine.copy_(saved)
