"""Run an experiment: every network of its definition, once per seed, each in a run folder.

    DIR/runs/<run>-s<seed>/   a `cnnlab train` run folder, plus result.json when it ended
    DIR/report.md, DIR/*.png  written by report.py from the run folders

Resumable: a run folder with result.json is finished and skipped (when its recipe is the one
asked for; another recipe is an error, not a silent mix); one with a checkpoint but no
result.json was interrupted and is resumed from its checkpoint. result.json is written
atomically after `train` returns, so it exists only for runs that ended; a diverged run ends
too (the report marks it), and is tried again only once its result.json is deleted.

Data: the training split ("train", all 50k images of CIFAR-10, as for the paper's Table 6) and
the test split, evaluated about 20 times a run for the curves (Fig. 6 shows test error). The
paper's 45k/5k split served its analysis; here nothing is selected, so no validation split is
held out. The data are loaded once per experiment, and only when a run needs training.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import torch

from cnnlab.analysis.plots import read_run
from cnnlab.data import ArrayDataset, load_dataset
from cnnlab.experiments.definitions import Experiment, RunSpec, get_experiment
from cnnlab.experiments.report import (
    RESULT_FILE,
    Settings,
    final_train_error,
    run_dir,
    write_report,
)
from cnnlab.models.registry import list_models
from cnnlab.train.checkpoint import atomic_write
from cnnlab.train.loop import TrainingDiverged, train
from cnnlab.train.recipes import Recipe, describe_differences, get_recipe

__all__ = ["make_recipe", "run_experiment", "run_status"]

EVAL_POINTS = 20  # test evaluations per run: enough points for a curve


def make_recipe(
    name: str = "he2015",
    *,
    budget: float | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    precision: str | None = None,
) -> Recipe:
    """A named recipe over `budget` times its steps (milestones scale along), or `steps`."""
    if budget is not None and steps is not None:
        raise ValueError("give --budget or --steps, not both")
    recipe = get_recipe(name).replace(batch_size=batch_size, precision=precision)
    if steps is not None:
        return recipe.with_steps(steps)
    return recipe.scaled(1.0 if budget is None else budget)


def run_status(folder: Path, recipe: Recipe, limits: Mapping[str, int | None] | None = None) -> str:
    """The state of a run folder: "ended" (result.json), "started" (to resume) or "new".

    Args:
        folder: the run folder.
        recipe: the recipe the experiment asks for.
        limits: {"limit_train": ..., "limit_test": ...} the experiment asks for.

    Raises:
        ValueError: the folder holds an ended run of another recipe or data subset.
    """
    result = folder / RESULT_FILE
    if result.exists():
        ended = json.loads(result.read_text())
        saved = {**ended["recipe"], **{k: ended.get(k) for k in limits or {}}}
        asked = {**recipe.to_dict(), **(limits or {})}
        differences = describe_differences(saved, asked)
        if differences:
            was, now = differences
            raise ValueError(
                f"{folder} holds a run made with {was}; this experiment asks for {now}. "
                "Give another --out, or the same --budget/--steps, recipe and limits"
            )
        return "ended"
    started = ("checkpoint.pt", "config.json", "metrics.jsonl")
    return "started" if any((folder / f).exists() for f in started) else "new"


def run_experiment(
    experiment: str | Experiment,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    budget: float | None = None,
    steps: int | None = None,
    seeds: int = 1,
    recipe: str = "he2015",
    precision: str | None = None,
    batch_size: int | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
    device: str | None = None,
    compile: bool = False,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> Path:
    """Train what an experiment needs, skipping ended runs, then write its report.

    Args:
        experiment: "degradation", "depth", "shortcuts" or an `Experiment`.
        data: as for `load_dataset`: "cifar10", "cifar100" or a path.
        out: the experiment folder (runs/, report.md, figures).
        budget: the fraction of the recipe's steps (he2015: of 64k iterations); default 1.
        steps: optimizer steps instead of a budget.
        seeds: runs per network, with seeds 0 .. seeds - 1.
        recipe: "he2015" (the paper's, default) or "fast".
        precision, batch_size: override the recipe's.
        limit_train, limit_test: use this many images of the split (the same fixed random
            subset for every run); None: all.
        device: "cpu", "cuda", ...; None: the GPU if there is one.
        compile: torch.compile the training step.
        cache_dir: where the datasets are cached.
        progress: progress bars and a line per run.

    Returns:
        The path of report.md.

    Raises:
        ValueError: bad options, or `out` holding runs made with another recipe.
        DataError: the dataset cannot be read.
    """
    exp = get_experiment(experiment) if isinstance(experiment, str) else experiment
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    for name, limit in (("limit_train", limit_train), ("limit_test", limit_test)):
        if limit is not None and limit < 1:
            raise ValueError(f"{name} must be at least 1, got {limit}")
    chosen = make_recipe(
        recipe, budget=budget, steps=steps, batch_size=batch_size, precision=precision
    )
    out = Path(out)
    budget = None if steps is not None else 1.0 if budget is None else budget
    settings = Settings(str(data), chosen, budget, seeds, limit_train, limit_test)
    limits = {"limit_train": limit_train, "limit_test": limit_test}
    registered = set(list_models())
    jobs = [(spec, seed) for spec in exp.runs if spec.model in registered for seed in range(seeds)]
    statuses = [run_status(run_dir(out, spec, seed), chosen, limits) for spec, seed in jobs]

    loaded: dict[str, ArrayDataset] = {}

    def split(name: str, limit: int | None) -> ArrayDataset:
        if name not in loaded:
            dataset = load_dataset(data, name, cache_dir=cache_dir, progress=progress)
            loaded[name] = _subset(dataset, limit)
        return loaded[name]

    eval_every = max(1, chosen.steps // EVAL_POINTS)
    info = {"data": str(data), "split": "full", "recipe_name": chosen.name,
            "experiment": exp.name, **limits}  # fmt: skip
    for k, ((spec, seed), status) in enumerate(zip(jobs, statuses, strict=True), 1):
        folder = run_dir(out, spec, seed)
        head = f"[{k}/{len(jobs)}] {folder.name}:"
        if status == "ended":
            _say(progress, f"{head} ended before, skipped")
            continue
        _say(progress, f"{head} {'resuming' if status == 'started' else 'training'}, "
                       f"{chosen.steps:,} steps of {chosen.batch_size}")  # fmt: skip
        train_data, test_data = split("train", limit_train), split("test", limit_test)
        try:
            result = train(
                spec.model, train_data, chosen, out=folder, test_data=test_data,
                model_options=dict(spec.options), seed=seed, device=device, compile=compile,
                resume=status == "started", eval_every=eval_every,
                log_every=min(50, eval_every), progress=progress, info=info,
            )  # fmt: skip
            ended = {"status": "finished", "test_error": result.test_error}
        except TrainingDiverged as e:
            _say(True, f"{head} {e}")  # shown even when quiet: the report marks the run
            ended = {"status": "diverged", "test_error": None, "message": str(e)}
        _write_result(folder, spec, seed, chosen, {**ended, **limits})

    return write_report(exp, out, settings)


def _subset(dataset: ArrayDataset, limit: int | None) -> ArrayDataset:
    """A fixed random subset of `limit` images (the same for every run and seed)."""
    if limit is None or limit >= len(dataset):
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))
    return dataset.subset(order[:limit].sort().values)


def _write_result(
    folder: Path, spec: RunSpec, seed: int, recipe: Recipe, ended: dict[str, object]
) -> None:
    """result.json: the run ended; its final errors (percent) and the time it took."""
    train_error = elapsed = None
    metrics = folder / "metrics.jsonl"
    if metrics.exists():
        with contextlib.suppress(ValueError):  # no training error logged yet
            train_error = final_train_error(read_run(folder), recipe.steps)
        for line in reversed(metrics.read_text().splitlines()):
            with contextlib.suppress(json.JSONDecodeError):
                elapsed = json.loads(line).get("elapsed_s")
                break
    result = {
        "run": spec.name, "model": spec.model, "model_options": dict(spec.options),
        "seed": seed, **ended, "train_error": train_error, "elapsed_s": elapsed,
        "steps": recipe.steps, "recipe": recipe.to_dict(), "cpu": _cpu_name(),
        "ended": datetime.now(UTC).isoformat(timespec="seconds"),
    }  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=1, default=str) + "\n"
    atomic_write(folder / RESULT_FILE, lambda f: f.write(text.encode()))


def _cpu_name() -> str:
    """The processor's model name ("AMD EPYC 7R13 Processor"), where the system tells it."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def _say(enabled: bool, line: str) -> None:
    if enabled:
        print(line, flush=True)
