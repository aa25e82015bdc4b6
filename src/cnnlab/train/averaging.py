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
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["WeightAverage"]


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
