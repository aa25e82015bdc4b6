"""Runs sized in minutes: `cnnlab train ... --time 3`.

The same command should take about the same time on any machine, so the run measures how long
its step takes here, fixes its number of steps so that training and evaluations end in about
the time asked for, and only then starts; the learning-rate schedule is laid over that length
(`Recipe.with_steps`), so a 3-minute run decays to zero like a 3-hour one. The steps, and the
measurements they came from, go into config.json and the recipe of the checkpoints; a resumed
run keeps them (it is not sized again).

The measurement trains a throw-away copy of the network for a few steps (after WARMUP steps
that absorb one-time costs: oneDNN's primitive creation, cuDNN's algorithm search, a CUDA
graph's capture) and evaluates a few hundred held-out images, so its cost is a few seconds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

__all__ = ["Sizing", "check_minutes", "eval_interval", "evaluations", "measure", "steps_for_time"]

WARMUP = 4  # untimed steps: the CUDA-graph step captures at its fourth call
MIN_TIMED_S = 2.0  # time at least this long ...
MIN_TIMED_STEPS = 3  # ... and at least this many steps
MAX_TIMED_STEPS = 200
EVALS_PER_RUN = 10  # evaluations of a run at most, and at most one an epoch

clock: Callable[[], float] = time.perf_counter  # replaced by tests with a fake clock


@dataclass(frozen=True)
class Sizing:
    """How a timed run was sized (recorded in config.json)."""

    minutes: float
    step_s: float  # measured seconds per training step
    eval_image_s: float  # measured seconds per evaluated image
    steps: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def check_minutes(minutes: float | None) -> None:
    """Refuse a time budget that is not a positive, finite number of minutes (None: none)."""
    if minutes is not None and not (minutes > 0 and math.isfinite(minutes)):
        raise ValueError(f"--time must be a positive number of minutes, got {minutes}")


def eval_interval(total: int, steps_per_epoch: int) -> int:
    """Default steps between evaluations: at most one an epoch, at most EVALS_PER_RUN a run."""
    return max(steps_per_epoch, math.ceil(total / EVALS_PER_RUN), 1)


def evaluations(total: int, every: int) -> int:
    """Evaluations of a run of `total` steps, evaluating every `every` steps and at the end."""
    return total // every + (1 if total % every else 0)


def steps_for_time(
    seconds: float, step_s: float, eval_s: float, steps_per_epoch: int, min_steps: int = 1
) -> int:
    """The most steps whose training and default evaluations fit in `seconds`.

    Args:
        seconds: the time asked for.
        step_s: seconds per training step.
        eval_s: seconds per evaluation of the held-out data (0 without any).
        steps_per_epoch: for the default evaluation interval.
        min_steps: never fewer (a run too short to learn anything is still one step).
    """
    if not (seconds > 0 and step_s > 0 and eval_s >= 0):
        raise ValueError(f"cannot size a run of {seconds} s from a step of {step_s} s")

    def cost(steps: int) -> float:
        return steps * step_s + evaluations(steps, eval_interval(steps, steps_per_epoch)) * eval_s

    # cost() grows with steps, but for a few steps where one evaluation more starts: a binary
    # search for the largest length that fits, between one step and no evaluations at all.
    low, high = min_steps, max(min_steps, math.floor(seconds / step_s))
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if cost(mid) <= seconds else (low, mid - 1)
    return low


def measure(step: Callable[[int], object], sync: Callable[[object], None]) -> float:
    """Seconds per call of `step(i)` after WARMUP untimed calls.

    Args:
        step: runs the i-th training step of the measurement.
        sync: waits for the device to finish what `step` returned (e.g. `.item()`).
    """
    for i in range(WARMUP):
        sync(step(i))
    start = clock()
    timed = 0
    while timed < MAX_TIMED_STEPS:
        out = step(WARMUP + timed)
        timed += 1
        if timed >= MIN_TIMED_STEPS:
            sync(out)
            if clock() - start >= MIN_TIMED_S:
                break
    sync(out)
    return (clock() - start) / timed
