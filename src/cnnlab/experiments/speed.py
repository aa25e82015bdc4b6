"""Speed experiments: race networks to a training error, each at its fastest learning rate.

Krizhevsky et al. 2012, section 3.1 and Fig. 1: "A four-layer convolutional neural network
with ReLUs (solid line) reaches a 25% training error rate on CIFAR-10 six times faster than an
equivalent network with tanh neurons (dashed line). The learning rates for each network were
chosen independently to make training as fast as possible."

    DIR/runs/<run>-lr<lr>-s<seed>/   a `cnnlab train` run folder, plus result.json when it ended
    DIR/report.md                   the search, the iterations each network needs, their ratio
    DIR/curves.png                  training error against epochs at the chosen rates (Fig. 1)
    DIR/lr-search.png               every learning rate tried, a panel per network

Training error. The loop logs `log_per_epoch` times an epoch (CIFAR-10: every 39 steps, 4,992
images) the error on the mini-batches trained since the previous log point, each batch seen by
the network as it was at that step: what cuda-convnet printed as it trained, at no extra cost.
Without augmentation or dropout these are the training images as they are. A run ends at the
first log point at or below the threshold (`train(until_train_error=...)`), and that point's
step is its iterations to the threshold (`steps_to_error`): a resolution of a tenth of an epoch,
the error counted over about 5,000 images (a standard deviation of about 0.6 points at 25%).

The learning-rate search, for each network, on seed 0. Iterations to the threshold against the
learning rate are taken to fall and then rise (one minimum), so the search starts in the middle
of the grid and trains the untried neighbours of the fastest run so far until the fastest has
been tried on both sides (or sits at the grid's edge, which the report flags). Runs are ranked
by iterations to the threshold (at the same log point, the lower error first: it crossed
earlier within the interval); runs that did not reach it come after those that did, by their
last training error; diverged runs last; remaining ties go to the smaller learning rate. Each
run stops at the recipe's steps (a cap), and once it has taken as many steps as the fastest so
far without reaching the threshold: from there it could at best tie, so the rest would not
change the choice. Further seeds (`seeds`) train the chosen rate again, to the cap.

Resumable, as run.py: a run folder with result.json ended and is read, not trained; one with a
checkpoint but no result.json is resumed. The search is a function of the results, so a rerun
with the same options asks for the same runs with the same caps.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cnnlab.analysis.plots import DPI, RunCurves, read_run
from cnnlab.data import ArrayDataset, load_dataset
from cnnlab.experiments.definitions import RunSpec, SpeedExperiment
from cnnlab.experiments.report import (
    RESULT_FILE,
    duration_text,
    fixed_subset,
    machine_text,
    mean_std,
    report_opening,
)
from cnnlab.experiments.run import check_counts, make_recipe, run_status
from cnnlab.train.checkpoint import atomic_write
from cnnlab.train.distributed import resolve_device
from cnnlab.train.hardware import cpu_name
from cnnlab.train.loop import TrainingDiverged, train
from cnnlab.train.recipes import Recipe, describe_differences

__all__ = [
    "Outcome",
    "SpeedSettings",
    "allowed_steps",
    "fastest",
    "next_lr",
    "ratio_sentence",
    "read_outcome",
    "run_speed_experiment",
    "speed_run_dir",
    "steps_to_error",
    "write_speed_report",
]

STATUSES = ("reached", "stopped", "diverged")
STYLES = ("-", "--", ":", "-.")  # the runs' line styles: Fig. 1 draws ReLU solid, tanh dashed


def steps_to_error(steps: Sequence[int], errors: Sequence[float], threshold: float) -> int | None:
    """The first logged step whose training error is at or below `threshold` (percent).

    `errors[i]` is the error over the steps up to `steps[i]` since the previous log point, as
    metrics.jsonl records it; None when no logged error reaches the threshold.
    """
    return next((s for s, e in zip(steps, errors, strict=True) if e <= threshold), None)


@dataclass(frozen=True)
class Outcome:
    """How the run of one learning rate ended.

    Attributes:
        lr: its learning rate.
        status: "reached" (the threshold), "stopped" (at its cap without reaching it) or
            "diverged".
        steps: the steps it trained: for "reached", its iterations to the threshold.
        cap: the steps it was allowed.
        last_error: its training error at its last log point (%), None if it logged none.
    """

    lr: float
    status: str
    steps: int
    cap: int
    last_error: float | None

    @property
    def reached(self) -> bool:
        return self.status == "reached"

    def rank(self) -> tuple[int, float, float, float]:
        """Sort key, fastest first (see the module docstring)."""
        if self.reached and self.last_error is not None:
            # At the same log point, the lower error crossed the threshold earlier within it.
            return (0, self.steps, self.last_error, self.lr)
        if self.status == "stopped" and self.last_error is not None:
            return (1, self.last_error, 0.0, self.lr)
        return (2, 0.0, 0.0, self.lr)


def fastest(outcomes: Iterable[Outcome]) -> Outcome | None:
    """The fastest of the outcomes (None for none)."""
    return min(outcomes, key=Outcome.rank, default=None)


def next_lr(lrs: Sequence[float], outcomes: Mapping[float, Outcome]) -> float | None:
    """The next learning rate of the search over the ascending grid `lrs`; None when done.

    The grid's middle first (the upper middle for an even count), then the untried
    neighbours of the fastest so far, the smaller first.
    """
    tried = {lr: o for lr, o in outcomes.items() if lr in lrs}
    best = fastest(tried.values())
    if best is None:
        return lrs[len(lrs) // 2]
    i = lrs.index(best.lr)
    for j in (i - 1, i + 1):
        if 0 <= j < len(lrs) and lrs[j] not in tried:
            return lrs[j]
    return None


def allowed_steps(cap: int, outcomes: Iterable[Outcome]) -> int:
    """The steps the next run of a search may take: the cap, or fewer when a run already
    reached the threshold in fewer (a slower run is stopped there)."""
    return min([cap, *(o.steps for o in outcomes if o.reached)])


def speed_run_dir(out: str | Path, spec: RunSpec, lr: float, seed: int) -> Path:
    """DIR/runs/<run>-lr<lr>-s<seed>, e.g. runs/convnet4-relu-lr0.02-s0."""
    return Path(out) / "runs" / f"{spec.name}-lr{lr:g}-s{seed}"


def read_outcome(folder: Path, threshold: float) -> Outcome:
    """The outcome of an ended run, from its result.json and metrics.jsonl."""
    result = json.loads((folder / RESULT_FILE).read_text())
    steps, errors = _train_curve(folder)
    cap = int(result["recipe"]["steps"])
    if result["status"] == "diverged":
        return Outcome(float(result["lr"]), "diverged", steps[-1] if steps else 0, cap, None)
    reached = steps_to_error(steps, errors, threshold)
    if reached is not None:
        return Outcome(float(result["lr"]), "reached", reached, cap, errors[steps.index(reached)])
    return Outcome(float(result["lr"]), "stopped", steps[-1] if steps else 0, cap,
                   errors[-1] if errors else None)  # fmt: skip


def _train_curve(folder: Path) -> tuple[list[int], list[float]]:
    if not (folder / "metrics.jsonl").exists():
        return [], []
    try:
        curves = read_run(folder)
    except ValueError:  # no training error logged
        return [], []
    return list(curves.train_steps), list(curves.train_error)


@dataclass(frozen=True)
class SpeedSettings:
    """What a speed experiment was asked for; the report states it."""

    data: str
    recipe: Recipe  # every run's, but for lr; its steps are the cap
    lrs: tuple[float, ...]
    seeds: int
    limit_train: int | None = None


def run_speed_experiment(
    exp: SpeedExperiment,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    budget: float | None = None,
    steps: int | None = None,
    seeds: int = 1,
    recipe: str | None = None,
    precision: str | None = None,
    batch_size: int | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
    lrs: Sequence[float] | None = None,
    device: str | None = None,
    compile: bool = False,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    jobs: int = 1,
) -> Path:
    """Search each network's fastest learning rate, train further seeds, write the report.

    Called by `run_experiment` for a `SpeedExperiment`; the arguments are its. `budget` and
    `steps` set the cap of a run (a fraction of the recipe's steps, or steps); `lrs` replaces
    the experiment's grid.

    Raises:
        ValueError: bad options, or `out` holding runs made with other settings; raised before
            anything is loaded or written where the folder shows it.
    """
    check_counts(seeds=seeds, limit_train=limit_train)
    if jobs != 1:
        raise ValueError(
            f"{exp.name} searches its learning rates one run after another: use --jobs 1"
        )
    if limit_test is not None:
        raise ValueError(f"{exp.name} measures training error only; it takes no --limit-test")
    grid = tuple(float(lr) for lr in (lrs if lrs else exp.lrs))
    if list(grid) != sorted(set(grid)) or grid[0] <= 0:
        raise ValueError(f"the learning rates must be positive and ascending, got {grid}")
    base = make_recipe(
        recipe or exp.recipe, budget=budget, steps=steps, batch_size=batch_size,
        precision=precision,
    )  # fmt: skip
    out = Path(out)
    limits = {"limit_train": limit_train, "until_train_error": exp.threshold}
    _check_existing(out, exp, base, limits)
    settings = SpeedSettings(str(data), base, grid, seeds, limit_train)
    racer = _Racer(exp, data, out, base, limits, resolve_device(device), compile,
                   cache_dir, progress)  # fmt: skip
    for spec in exp.runs:
        outcomes: dict[float, Outcome] = {}
        while (lr := next_lr(grid, outcomes)) is not None:
            outcomes[lr] = racer.run(spec, lr, 0, allowed_steps(base.steps, outcomes.values()))
        best = fastest(outcomes.values())
        if best is not None and best.reached:
            for seed in range(1, seeds):
                racer.run(spec, best.lr, seed, base.steps)
    return write_speed_report(exp, out, settings)


def _check_existing(
    out: Path, exp: SpeedExperiment, base: Recipe, limits: Mapping[str, object]
) -> None:
    """Refuse, before training anything, a folder whose ended runs were made otherwise.

    A run's lr and cap are the search's; everything else must be the asked recipe's."""
    asked = {k: v for k, v in base.to_dict().items() if k not in ("lr", "steps")}
    asked |= dict(limits)
    names = tuple(f"{spec.name}-lr" for spec in exp.runs)
    for result in sorted((out / "runs").glob(f"*/{RESULT_FILE}")):
        if not result.parent.name.startswith(names):
            continue
        ended = json.loads(result.read_text())
        differences = describe_differences({**ended["recipe"], **ended}, asked)
        if differences:
            was, now = differences
            raise ValueError(
                f"{result.parent} holds a run made with {was}; this experiment asks for {now}. "
                "Give another --out, or the same --budget/--steps, recipe and limits"
            )


@dataclass
class _Racer:
    """Trains (or reads) the runs the search asks for; loads the data for the first."""

    exp: SpeedExperiment
    data: str | os.PathLike
    out: Path
    base: Recipe  # every run's recipe but for its lr and cap
    limits: dict[str, Any]  # limit_train, until_train_error: recorded in result.json
    device: torch.device
    compile: bool
    cache_dir: str | os.PathLike | None
    progress: bool
    _train_data: ArrayDataset | None = None

    def load(self) -> ArrayDataset:
        if self._train_data is None:
            dataset = load_dataset(self.data, "train", cache_dir=self.cache_dir,
                                   progress=self.progress)  # fmt: skip
            self._train_data = fixed_subset(dataset, self.limits["limit_train"])
        return self._train_data

    def run(self, spec: RunSpec, lr: float, seed: int, cap: int) -> Outcome:
        """Train the run of `spec` at `lr` with `seed` for at most `cap` steps, or read it."""
        folder = speed_run_dir(self.out, spec, lr, seed)
        recipe = self.base.replace(lr=lr).with_steps(cap)
        status = run_status(folder, recipe, self.limits)
        threshold = self.exp.threshold
        head = f"{folder.name}:"
        if status == "ended":
            _say(self.progress, f"{head} ended before, skipped")
        else:
            _say(self.progress, f"{head} {'resuming' if status == 'started' else 'training'}, "
                                f"at most {cap:,} steps of {recipe.batch_size}, until "
                                f"{threshold:g}% training error")  # fmt: skip
            self._train(spec, recipe, seed, folder, resume=status == "started")
        outcome = read_outcome(folder, threshold)
        if status != "ended" and outcome.status != "diverged":  # a divergence was said
            _say(self.progress, f"{head} {_outcome_line(outcome, threshold)}")
        return outcome

    def _train(self, spec: RunSpec, recipe: Recipe, seed: int, folder: Path, resume: bool) -> None:
        train_data = self.load()
        steps_per_epoch = len(train_data) // recipe.batch_size
        log_every = max(1, steps_per_epoch // self.exp.log_per_epoch)
        every = log_every * self.exp.log_per_epoch  # checkpoints about once an epoch, on log points
        info = {"data": str(self.data), "split": "full", "recipe_name": recipe.name,
                "experiment": self.exp.name, **self.limits}  # fmt: skip
        ended: dict[str, object]
        try:
            result = train(
                spec.model, train_data, recipe, out=folder, model_options=dict(spec.options),
                seed=seed, device=self.device, compile=self.compile, resume=resume,
                eval_every=every, checkpoint_every=every, log_every=log_every,
                until_train_error=self.exp.threshold, progress=self.progress, info=info,
            )  # fmt: skip
            ended = {"status": "reached" if result.reached_step is not None else "stopped"}
        except TrainingDiverged as e:
            ended = {"status": "diverged", "message": str(e)}
            _say(True, f"{folder.name}: {e}")  # even when quiet: the report marks it
        _write_result(folder, spec, seed, recipe, {**ended, **self.limits})


def _write_result(
    folder: Path, spec: RunSpec, seed: int, recipe: Recipe, ended: dict[str, object]
) -> None:
    """result.json: the run ended (reached, stopped or diverged), and what it took."""
    elapsed = None
    if (folder / "metrics.jsonl").exists():
        for line in reversed((folder / "metrics.jsonl").read_text().splitlines()):
            try:
                elapsed = json.loads(line).get("elapsed_s")
                break
            except json.JSONDecodeError:
                continue
    result = {
        "run": spec.name, "model": spec.model, "model_options": dict(spec.options),
        "lr": recipe.lr, "seed": seed, **ended, "elapsed_s": elapsed, "steps": recipe.steps,
        "recipe": recipe.to_dict(), "cpu": cpu_name(),
        "ended": datetime.now(UTC).isoformat(timespec="seconds"),
    }  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=1, default=str) + "\n"
    atomic_write(folder / RESULT_FILE, lambda f: f.write(text.encode()))


def _outcome_line(o: Outcome, threshold: float) -> str:
    if o.reached:
        return f"reached {threshold:g}% training error at step {o.steps:,}"
    error = f" ({o.last_error:.1f}% training error)" if o.last_error is not None else ""
    return f"stopped at step {o.steps:,} without reaching {threshold:g}%{error}"


def _say(enabled: bool, line: str) -> None:
    if enabled:
        print(line, flush=True)


# -- the report ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    """An ended run as the report reads it."""

    spec: RunSpec
    seed: int
    outcome: Outcome
    curves: RunCurves | None
    steps_per_epoch: int | None  # from config.json: training images // batch
    elapsed_s: float
    config: dict[str, Any] | None
    machine: str | None

    def epochs(self, steps: int) -> float | None:
        return steps / self.steps_per_epoch if self.steps_per_epoch else None


def _read(out: Path, spec: RunSpec, lr: float, seed: int, threshold: float) -> _Run | None:
    folder = speed_run_dir(out, spec, lr, seed)
    if not (folder / RESULT_FILE).exists():
        return None
    result = json.loads((folder / RESULT_FILE).read_text())
    config = None
    if (folder / "config.json").exists():
        config = json.loads((folder / "config.json").read_text())
    per_epoch = None
    if config is not None:
        per_epoch = int(config["train_images"]) // int(config["recipe"]["batch_size"])
    curves = None
    if (folder / "metrics.jsonl").exists():
        try:
            curves = read_run(folder, f"{spec.name}, lr {lr:g}")
        except ValueError:
            curves = None
    return _Run(
        spec, seed, read_outcome(folder, threshold), curves, per_epoch,
        float(result.get("elapsed_s") or 0.0), config,
        machine_text(config, result) if config is not None else None,
    )  # fmt: skip


def write_speed_report(exp: SpeedExperiment, out: str | Path, settings: SpeedSettings) -> Path:
    """Write DIR/report.md and its figures from the run folders in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    threshold, grid = exp.threshold, settings.lrs
    search: dict[str, list[_Run]] = {}  # seed 0 of each learning rate tried, by run name
    chosen: dict[str, list[_Run]] = {}  # the seeds of the fastest learning rate
    for spec in exp.runs:
        tried = [r for lr in grid if (r := _read(out, spec, lr, 0, threshold)) is not None]
        search[spec.name] = tried
        best = fastest(r.outcome for r in tried)
        chosen[spec.name] = []
        if best is not None:
            seeds = [_read(out, spec, best.lr, s, threshold) for s in range(settings.seeds)]
            chosen[spec.name] = [r for r in seeds if r is not None]
    every = [r for runs in search.values() for r in runs] + [
        r for runs in chosen.values() for r in runs if r.seed > 0
    ]
    recipe = settings.recipe
    config = next((r.config for r in every if r.config), None)
    cap = f"{recipe.steps:,} steps"
    if config is not None:
        per_epoch = int(config["train_images"]) // recipe.batch_size
        cap += f" ({recipe.steps / per_epoch:.3g} epochs)" if per_epoch else ""
        log_every = max(1, per_epoch // exp.log_per_epoch)
        measured = (
            "the error on the mini-batches trained since the previous measurement, taken "
            + ("every step" if log_every == 1 else f"every {log_every:,} steps")
            + f" ({log_every * recipe.batch_size:,} images, {per_epoch / log_every:.3g} times "
            "an epoch)"
        )
    else:
        measured = (
            "the error on the mini-batches trained since the previous measurement, "
            f"{exp.log_per_epoch} measurements an epoch"
        )
    seeds = str(settings.seeds)
    if settings.seeds > 1:
        more = "seed 1 trains" if settings.seeds == 2 else f"seeds 1 to {settings.seeds - 1} train"
        seeds += f": seed 0 searches; {more} each network's chosen learning rate again, to the cap"
    machines = "; ".join(dict.fromkeys(r.machine for r in every if r.machine)) or "no run yet"
    wall = sum(r.elapsed_s for r in every)
    start = grid[len(grid) // 2]
    lines = [
        *report_opening(exp),
        f"| data | {_data_line(settings, config)} |",
        f"| networks | {', '.join(s.name for s in exp.runs)} |",
        f"| recipe | {recipe.name}, from {recipe.source}; batch {recipe.batch_size}, "
        f"{_optimizer(recipe)}; {recipe.precision} |",
        f"| learning rates | {', '.join(f'{lr:g}' for lr in grid)}: searched on seed 0 of "
        f"each network, starting at {start:g} |",
        f"| training error | {measured}; a run ends at the first at or below {threshold:g}% |",
        f"| cap | {cap} a run; a run of the search also stops once it has taken as many steps "
        "as the fastest so far |",
        f"| seeds | {seeds} |",
        f"| machine | {machines} |",
        f"| wall time | {duration_text(wall)} in all (summed over runs) |",
        f"| written | {datetime.now(UTC).isoformat(timespec='seconds')} |",
        "",
        "## Result",
        "",
        f"| network | learning rate | iterations to {threshold:g}% | epochs | seeds |",
        "|---|---|---|---|---|",
    ]
    for spec in exp.runs:
        runs = chosen[spec.name]
        if not runs:
            lines.append(f"| {spec.name} | — | no run ended | — | 0 |")
            continue
        reached = [r for r in runs if r.outcome.reached]
        stat = mean_std([r.outcome.steps for r in reached])
        epochs = mean_std([r.epochs(r.outcome.steps) for r in reached if r.steps_per_epoch])
        if stat is None:
            text, ep = f"not reached in {max(r.outcome.cap for r in runs):,}", "—"
        else:
            text = _count(stat.mean, stat.std)
            ep = _count(epochs.mean, epochs.std, 1) if epochs is not None else "—"
            if len(reached) < len(runs):
                text += f" ({len(runs) - len(reached)} of {len(runs)} seeds did not reach it)"
        lines.append(f"| {spec.name} | {runs[0].outcome.lr:g} | {text} | {ep} | {len(runs)} |")
    lines += [
        "",
        "Iterations are optimizer steps of the batch size above, epochs passes over the "
        "training images; over several seeds, mean ± sample standard deviation.",
        "",
        ratio_sentence(exp, {n: [r.outcome for r in runs] for n, runs in chosen.items()}),
        "",
    ]
    lines += _search_table(exp, search, threshold)
    figures = _figures(exp, out, search, chosen, threshold)
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{caption}]({path.name})\n\n{caption}\n" for path, caption in figures]
    notes = list(exp.notes)
    for spec in exp.runs:
        best = fastest(r.outcome for r in search[spec.name])
        if best is not None and best.reached and best.lr in (grid[0], grid[-1]):
            side = "smallest" if best.lr == grid[0] else "largest"
            notes.append(
                f"{spec.name}'s fastest learning rate, {best.lr:g}, is the grid's {side}: a "
                "rate beyond it may be faster still (widen the grid with --lrs)."
            )
    if notes:
        lines += ["", "## Notes", "", *(f"- {n}" for n in notes)]
    path = out / "report.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def _count(mean: float, std: float | None, digits: int = 0) -> str:
    text = f"{mean:,.{digits}f}"
    return text if std is None else f"{text} ± {std:,.{digits}f}"


def _optimizer(recipe: Recipe) -> str:
    parts = [f"SGD momentum {recipe.momentum:g}" + (" (Nesterov)" if recipe.nesterov else "")]
    if recipe.schedule == "step" and not recipe.lr_milestones and not recipe.warmup_steps:
        parts.append("constant learning rate")
    else:
        parts.append(f"{recipe.schedule} schedule")
    parts.append(f"weight decay {recipe.weight_decay:g}")
    parts.append("augmentation" if recipe.augment else "no augmentation")
    if recipe.label_smoothing:
        parts.append(f"label smoothing {recipe.label_smoothing:g}")
    else:
        parts.append("no label smoothing")
    parts.append(f"inputs normalised per {recipe.normalize}")
    return ", ".join(parts)


def _data_line(settings: SpeedSettings, config: Mapping[str, Any] | None) -> str:
    if config is None:
        return settings.data
    train = f"{config['train_images']:,} training images"
    if settings.limit_train:
        train += f" (a fixed random subset, --limit-train {settings.limit_train})"
    else:
        train += " (the whole train split)"
    classes = len(config["classes"])
    return f"{settings.data}: {train}, {classes} classes; no test images (Fig. 1 is training error)"


def ratio_sentence(exp: SpeedExperiment, outcomes: Mapping[str, Sequence[Outcome]]) -> str:
    """The speed-up, from the outcomes of each run's seeds at its chosen learning rate.

    The ratio of the mean iterations to the threshold of the slower run to the faster one's,
    when every seed of both reached it; a lower bound (the slower run's cap over the faster
    one's iterations) when no seed of the slower one did; else not measured. Beside it, the
    paper's figure.
    """
    slow, fast = exp.ratio
    paper = exp.paper()
    quoted = f"; the paper: {paper.value:g} ({paper.source})." if paper is not None else "."
    head = f"**{slow} / {fast}**, iterations to {exp.threshold:g}% training error: "

    def mean_steps(name: str) -> float | None:
        runs = outcomes.get(name, ())
        if not runs or not all(o.reached for o in runs):
            return None
        return sum(o.steps for o in runs) / len(runs)

    a, b = mean_steps(slow), mean_steps(fast)
    if a is not None and b is not None:
        return f"{head}**{a / b:.2f}**{quoted}"
    slow_runs = outcomes.get(slow, ())
    if b is not None and slow_runs and not any(o.reached for o in slow_runs):
        cap = max(o.cap for o in slow_runs)
        return (
            f"{head}more than {cap / b:.2f} ({slow} did not reach {exp.threshold:g}% within "
            f"its cap of {cap:,} steps){quoted}"
        )
    missing = [n for n, m in ((fast, b), (slow, a)) if m is None]
    return f"{head}not measured ({' and '.join(missing)}: not every seed reached it){quoted}"


def _search_table(
    exp: SpeedExperiment, search: Mapping[str, list[_Run]], threshold: float
) -> list[str]:
    lines = [
        "## Learning-rate search",
        "",
        f"| network | learning rate | result | iterations to {threshold:g}% | epochs "
        "| last training error (%) | wall time |",
        "|---|---|---|---|---|---|---|",
    ]
    for spec in exp.runs:
        runs = search[spec.name]
        best = fastest(r.outcome for r in runs)
        for r in sorted(runs, key=lambda r: r.outcome.lr):
            o = r.outcome
            lr = f"**{o.lr:g}**" if o is best else f"{o.lr:g}"
            if o.reached:
                result = "reached, fastest" if o is best else "reached"
                its = f"{o.steps:,}"
                epochs = r.epochs(o.steps)
                ep = f"{epochs:.1f}" if epochs is not None else "—"
            elif o.status == "stopped":
                result = f"stopped at {o.steps:,} steps"
                result += " (as many as a faster rate took)" if _pruned(o, runs) else " (the cap)"
                its, ep = "—", "—"
            else:
                result, its, ep = "diverged", "—", "—"
            last = f"{o.last_error:.1f}" if o.last_error is not None else "—"
            wall = duration_text(r.elapsed_s) if r.elapsed_s else "—"
            lines.append(f"| {spec.name} | {lr} | {result} | {its} | {ep} | {last} | {wall} |")
    lines += [
        "",
        "Seed 0 of each network; the fastest rate in bold. Epochs are passes over the training "
        "images, iterations optimizer steps.",
    ]
    return lines


def _pruned(o: Outcome, runs: Sequence[_Run]) -> bool:
    """Whether a stopped run was stopped by a faster one rather than by the cap."""
    return any(r.outcome.reached and r.outcome.steps == o.cap for r in runs)


# -- figures ---------------------------------------------------------------------------------


def _epoch_axis(run: _Run) -> tuple[list[float], list[float]]:
    assert run.curves is not None
    per = run.steps_per_epoch or 1
    return [s / per for s in run.curves.train_steps], list(run.curves.train_error)


def _figures(
    exp: SpeedExperiment,
    out: Path,
    search: Mapping[str, list[_Run]],
    chosen: Mapping[str, list[_Run]],
    threshold: float,
) -> list[tuple[Path, str]]:
    made = []
    best = {name: runs[0] for name, runs in chosen.items() if runs and runs[0].curves}
    if best:
        fig = Figure(figsize=(7.0, 4.6), dpi=DPI)
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        for i, spec in enumerate(exp.runs):
            run = best.get(spec.name)
            if run is None:
                continue
            x, y = _epoch_axis(run)
            ax.plot(x, y, STYLES[i % len(STYLES)], color="black", linewidth=1.6,
                    label=f"{spec.name}, lr {run.outcome.lr:g}")  # fmt: skip
        _finish(ax, threshold, "training error at each network's fastest learning rate")
        fig.tight_layout()
        path = out / "curves.png"
        fig.savefig(path, format="png", dpi=DPI)
        caption = (
            "Training error against epochs at each network's fastest learning rate (seed 0), "
            f"as the paper's Fig. 1; each run ends at {threshold:g}% (dotted)."
        )
        made.append((path, caption))
    panels = [(spec, [r for r in search[spec.name] if r.curves]) for spec in exp.runs]
    panels = [(spec, runs) for spec, runs in panels if runs]
    if panels:
        fig = Figure(figsize=(5.0 * len(panels), 4.4), dpi=DPI)
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (spec, runs) in zip(axes, panels, strict=True):
            fast = fastest(r.outcome for r in runs)
            for k, run in enumerate(sorted(runs, key=lambda r: r.outcome.lr)):
                x, y = _epoch_axis(run)
                bold = run.outcome is fast
                label = f"lr {run.outcome.lr:g}" + (" (fastest)" if bold else "")
                label += " (diverged)" if run.outcome.status == "diverged" else ""
                ax.plot(x, y, "-", color=f"C{k % 10}", linewidth=2.2 if bold else 1.0, label=label)
            _finish(ax, threshold, spec.name)
        fig.tight_layout()
        path = out / "lr-search.png"
        fig.savefig(path, format="png", dpi=DPI)
        made.append((path, "Every learning rate of the search (seed 0), a panel per network; "
                           "the fastest drawn bold."))  # fmt: skip
    return made


def _finish(ax: Any, threshold: float, title: str) -> None:
    ax.axhline(threshold, color="0.4", linestyle=":", linewidth=1.0)
    ax.set_xlabel("epochs")
    ax.set_ylabel("training error (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(left=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(title, fontsize=11)
