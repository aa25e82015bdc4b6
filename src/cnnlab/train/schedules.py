"""Learning rate at step t of a recipe, and the He et al. 2015 slow start.

Steps count from 0: `learning_rate(recipe, t)` is the rate of the t-th optimizer step. A
milestone m means steps 0..m-1 use the rate before it and step m the rate after it, so
he2015's "divide it by 10 at 32k and 48k iterations" gives 0.1 up to step 31,999, 0.01 from
step 32,000 and 0.001 from step 48,000.
"""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass

from cnnlab.train.recipes import Recipe

__all__ = ["Plateau", "SlowStart", "learning_rate", "model_depth"]

# The slow start watches a running training error: an exponential moving average of the
# per-batch error over about the last 20 batches, starting from 100% (the paper says only
# "training error"; one batch's error is too noisy to switch on).
RUNNING_ERROR_DECAY = 0.95


def learning_rate(
    recipe: Recipe,
    step: int,
    slow_start: SlowStart | None = None,
    plateau: Plateau | None = None,
) -> float:
    """The learning rate of optimizer step `step` (0-based) under `recipe`.

    Args:
        recipe: the schedule's shape and peak rate.
        step: 0-based index of the step about to be taken.
        slow_start: the He et al. slow-start state; while it is active the rate is the
            recipe's `slow_start_lr`.
        plateau: the "plateau" schedule's state (how many times the rate was divided).
    """
    if slow_start is not None and slow_start.active:
        assert recipe.slow_start_lr is not None
        return recipe.slow_start_lr
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    if recipe.schedule == "plateau":
        return recipe.lr * recipe.lr_gamma ** (plateau.reductions if plateau else 0)
    if recipe.schedule == "step":
        return recipe.lr * recipe.lr_gamma ** bisect.bisect_right(recipe.lr_milestones, step)
    # Decay to zero over the steps after warm-up: the last step gets a rate just above zero.
    progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
    if recipe.schedule == "linear":
        return recipe.lr * (1.0 - progress)
    return recipe.lr * 0.5 * (1.0 + math.cos(math.pi * progress))  # "cosine"


def model_depth(name: str) -> int | None:
    """The depth a model's name states ("resnet110" -> 110), or None ("googlenet")."""
    match = re.search(r"(\d+)$", name)
    return int(match.group(1)) if match else None


@dataclass
class SlowStart:
    """He et al. 2015, section 4.2: a low rate until the training error falls below 80%.

    Active from the first step for models of `recipe.slow_start_min_depth` layers or more
    (when the recipe has a `slow_start_lr`), until the running training error drops below
    `recipe.slow_start_until_error`; it never comes back. Its state is checkpointed, so a
    resumed run switches at the same step as an uninterrupted one.
    """

    active: bool
    running_error: float = 1.0  # starts at 100%: an untrained network is always wrong

    @classmethod
    def for_model(cls, recipe: Recipe, model_name: str) -> SlowStart:
        depth = model_depth(model_name) or 0
        return cls(active=recipe.slow_start_lr is not None and depth >= recipe.slow_start_min_depth)

    def update(self, batch_error: float, recipe: Recipe) -> None:
        """Record one training batch's error (a fraction, 0..1)."""
        if not self.active:
            return
        decay = RUNNING_ERROR_DECAY
        self.running_error = decay * self.running_error + (1 - decay) * batch_error
        if self.running_error < recipe.slow_start_until_error:
            self.active = False

    def state_dict(self) -> dict[str, object]:
        return {"active": self.active, "running_error": self.running_error}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.active = bool(state["active"])
        self.running_error = float(state["running_error"])  # type: ignore[arg-type]


@dataclass
class Plateau:
    """The ImageNet papers' schedule: divide the rate when the validation error stops falling.

    Krizhevsky et al. 2012, section 5: "divide the learning rate by 10 when the validation
    error rate stopped improving with the current learning rate ... reduced three times prior
    to termination"; VGG (section 3.1) and ResNet (section 3.4) say the same. "Stopped
    improving": `recipe.plateau_patience` evaluations in a row without a new lowest error. A
    fresh rate starts with a fresh count. Checkpointed, so a resumed run divides at the same
    evaluations as an uninterrupted one.
    """

    reductions: int = 0
    best: float | None = None  # lowest validation error (%) at the current rate
    stale: int = 0  # evaluations since `best` improved

    def update(self, val_error: float, recipe: Recipe) -> bool:
        """Record an evaluation's validation error; True when the rate was just divided."""
        if recipe.schedule != "plateau":
            return False
        if self.best is None or val_error < self.best:
            self.best, self.stale = val_error, 0
            return False
        self.stale += 1
        if self.stale < recipe.plateau_patience or self.reductions >= recipe.plateau_max:
            return False
        self.reductions += 1
        self.best, self.stale = None, 0
        return True

    def state_dict(self) -> dict[str, object]:
        return {"reductions": self.reductions, "best": self.best, "stale": self.stale}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.reductions = int(state["reductions"])  # type: ignore[call-overload]
        self.best = None if state["best"] is None else float(state["best"])  # type: ignore[arg-type]
        self.stale = int(state["stale"])  # type: ignore[call-overload]
