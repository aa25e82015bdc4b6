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

Several runs at once (`--jobs N`, issue 7): a small CIFAR network leaves most of a GPU idle, so N
processes (spawned: CUDA does not survive a fork) each train one run at a time on the same
device, without progress bars, and the parent prints a line as each run ends. The parent
decodes the data into the cache first, so the workers only read it. The first run to fail stops
the experiment: the runs not started are dropped and those in flight are stopped, to resume from
their checkpoints when the experiment is run again. On the CPU each process gets its share of
the cores (`threads_per_run`): two processes that each took every core measured about 10x
slower each, two one-thread runs on two cores 1.17x the images/s of one run on both.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch

from cnnlab.analysis.plots import read_run
from cnnlab.data import ArrayDataset, load_dataset
from cnnlab.experiments.definitions import (
    Experiment,
    RunSpec,
    SpeedExperiment,
    get_experiment,
)
from cnnlab.experiments.report import (
    RESULT_FILE,
    Settings,
    final_train_error,
    fixed_subset,
    run_dir,
    write_report,
)
from cnnlab.models.registry import list_models
from cnnlab.train.checkpoint import atomic_write
from cnnlab.train.distributed import resolve_device
from cnnlab.train.hardware import cpu_name, threads_per_run
from cnnlab.train.loop import TrainingDiverged, run_started, train
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
    return "started" if run_started(folder) else "new"


def run_experiment(
    experiment: str | Experiment | SpeedExperiment,
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
    report_only: bool = False,
) -> Path:
    """Train what an experiment needs, skipping ended runs, then write its report.

    A `SpeedExperiment` (relu-vs-tanh) is run by `speed.run_speed_experiment`: a search
    over learning rates, each run ending at a training error; see speed.py.

    Args:
        experiment: "degradation", "depth", "shortcuts", "identity-mappings", "relu-vs-tanh",
            or an `Experiment` or `SpeedExperiment`.
        data: as for `load_dataset`: "cifar10", "cifar100" or a path.
        out: the experiment folder (runs/, report.md, figures).
        budget: the fraction of the recipe's steps (he2015: of 64k iterations); default 1.
            For a speed experiment the steps are each run's cap.
        steps: optimizer steps instead of a budget.
        seeds: runs per network, with seeds 0 .. seeds - 1.
        recipe: "he2015" (the paper's, default) or "fast"; a speed experiment's default is
            its own (relu2012).
        precision, batch_size: override the recipe's.
        limit_train, limit_test: use this many images of the split (the same fixed random
            subset for every run); None: all. A speed experiment uses no test images.
        lrs: a speed experiment's learning-rate grid (ascending), instead of its own.
        device: "cpu", "cuda", ...; None: the GPU if there is one.
        compile: torch.compile the training step.
        cache_dir: where the datasets are cached.
        progress: progress bars and a line per run.
        jobs: runs trained at once, each in its own process on `device` (see the module
            docstring); 1 (default): one after the other in this process. More than 1 needs
            a GPU.
        report_only: train nothing: write the report of the runs that have ended (an
            experiment stopped part-way; the report names the runs still to train).

    Returns:
        The path of report.md.

    Raises:
        ValueError: bad options (jobs > 1 on the CPU among them), or `out` holding runs made
            with another recipe; raised before anything is loaded or written.
        DataError: the dataset cannot be read.
        Exception: what a run raised in a worker process (jobs > 1), its message naming the
            run; the runs in flight are stopped and resume when the experiment is run again.
    """
    exp = get_experiment(experiment) if isinstance(experiment, str) else experiment
    if isinstance(exp, SpeedExperiment):
        if report_only:
            raise ValueError(
                f"--report-only is for experiments with a fixed set of runs, not {exp.name}: "
                "its learning-rate search decides its runs as it goes; rerun it to resume"
            )
        from cnnlab.experiments.speed import run_speed_experiment  # speed.py imports this module

        return run_speed_experiment(
            exp, data, out, budget=budget, steps=steps, seeds=seeds, recipe=recipe,
            precision=precision, batch_size=batch_size, limit_train=limit_train,
            limit_test=limit_test, lrs=lrs, device=device, compile=compile,
            cache_dir=cache_dir, progress=progress, jobs=jobs,
        )  # fmt: skip
    if lrs is not None:
        raise ValueError(f"--lrs is for a learning-rate search (relu-vs-tanh), not {exp.name}")
    recipe = recipe or "he2015"
    check_counts(seeds=seeds, jobs=jobs, limit_train=limit_train, limit_test=limit_test)
    dev = resolve_device(device)
    chosen = make_recipe(
        recipe, budget=budget, steps=steps, batch_size=batch_size, precision=precision
    )
    out = Path(out)
    budget = None if steps is not None else 1.0 if budget is None else budget
    settings = Settings(str(data), chosen, budget, seeds, limit_train, limit_test)
    limits = {"limit_train": limit_train, "limit_test": limit_test}
    registered = set(list_models())
    runs = [(spec, seed) for spec in exp.runs if spec.model in registered for seed in range(seeds)]
    statuses = [run_status(run_dir(out, spec, seed), chosen, limits) for spec, seed in runs]

    eval_every = max(1, chosen.steps // EVAL_POINTS)
    info = {"data": str(data), "split": "full", "recipe_name": chosen.name,
            "experiment": exp.name, **limits}  # fmt: skip
    how = _Training(data, cache_dir, chosen, dev, compile, eval_every, info, limits)
    pending = []
    for k, ((spec, seed), status) in enumerate(zip(runs, statuses, strict=True), 1):
        folder = run_dir(out, spec, seed)
        head = f"[{k}/{len(runs)}] {folder.name}:"
        if status == "ended":
            _say(progress, f"{head} ended before, skipped")
        else:
            pending.append(_Run(head, spec, seed, folder, resume=status == "started"))

    if report_only:
        _say(progress and bool(pending), f"--report-only: {len(pending)} runs not trained")
    elif jobs > 1 and pending:
        _train_in_pool(pending, how, jobs, progress)
    else:
        _train_in_order(pending, how, progress)

    return write_report(exp, out, settings, cache_dir=cache_dir)


def check_counts(**counts: int | None) -> None:
    """Refuse a count below one (seeds, jobs, limit_train, limit_test; None: not given)."""
    meaning = {"jobs": " (runs trained at once)"}
    for name, n in counts.items():
        if n is not None and n < 1:
            option = "--" + name.replace("_", "-")
            raise ValueError(f"{option} must be at least 1{meaning.get(name, '')}, got {n}")


@dataclass(frozen=True)
class _Training:
    """How every run of the experiment is trained: what a worker process needs besides its run."""

    data: str | os.PathLike
    cache_dir: str | os.PathLike | None
    recipe: Recipe
    device: torch.device
    compile: bool
    eval_every: int
    info: dict[str, object]  # for config.json
    limits: dict[str, int | None]  # limit_train, limit_test

    def load(self, split: str, progress: bool) -> ArrayDataset:
        """The training or test split, cut to its limit (decoded once, then read from the cache)."""
        dataset = load_dataset(self.data, split, cache_dir=self.cache_dir, progress=progress)
        return fixed_subset(dataset, self.limits[f"limit_{split}"])


@dataclass(frozen=True)
class _Run:
    """A run still to train, and whether it resumes from its checkpoint."""

    head: str  # "[3/8] resnet20-A-s0:", how its lines begin
    spec: RunSpec
    seed: int
    folder: Path
    resume: bool


def _train_and_record(
    run: _Run, how: _Training, train_data: ArrayDataset, test_data: ArrayDataset, progress: bool
) -> dict[str, object]:
    """Train one run and write its result.json (a diverged run too); returns what it wrote."""
    try:
        result = train(
            run.spec.model, train_data, how.recipe, out=run.folder, test_data=test_data,
            model_options=dict(run.spec.options), seed=run.seed, device=how.device,
            compile=how.compile, resume=run.resume, eval_every=how.eval_every,
            log_every=min(50, how.eval_every), progress=progress, info=how.info,
        )  # fmt: skip
        ended = {"status": "finished", "test_error": result.test_error}
    except TrainingDiverged as e:
        ended = {"status": "diverged", "test_error": None, "message": str(e)}
    return _write_result(run.folder, run.spec, run.seed, how.recipe, {**ended, **how.limits})


def _train_in_order(runs: list[_Run], how: _Training, progress: bool) -> None:
    """Train `runs` one after the other in this process, loading the data for the first."""
    loaded: dict[str, ArrayDataset] = {}
    for run in runs:
        _say(progress, f"{run.head} {'resuming' if run.resume else 'training'}, "
                       f"{how.recipe.steps:,} steps of {how.recipe.batch_size}")  # fmt: skip
        if not loaded:
            loaded = {split: how.load(split, progress) for split in ("train", "test")}
        result = _train_and_record(run, how, loaded["train"], loaded["test"], progress)
        if result["status"] == "diverged":
            _say(True, f"{run.head} {result['message']}")  # even when quiet: the report marks it


def _train_in_worker(run: _Run, how: _Training) -> dict[str, object]:
    """A task of the pool: load the two splits (from the cache), train the run, record it."""
    return _train_and_record(run, how, how.load("train", False), how.load("test", False), False)


def _train_in_pool(runs: list[_Run], how: _Training, jobs: int, progress: bool) -> None:
    """Train `runs`, `jobs` at a time in spawned processes; a line as each ends."""
    for split in ("train", "test"):  # decoded here once, so that the workers only read the cache
        how.load(split, progress)
    workers = min(jobs, len(runs))
    _say(progress, f"training {len(runs)} runs, {workers} at a time on {how.device}, "
                   f"{how.recipe.steps:,} steps of {how.recipe.batch_size} each")  # fmt: skip
    before = set(multiprocessing.active_children())  # not ours to stop
    context = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked process
    threads = threads_per_run(workers) if how.device.type == "cpu" else None
    with ProcessPoolExecutor(workers, context, initializer=_start_worker,
                             initargs=(threads,)) as pool:  # fmt: skip
        futures = {pool.submit(_train_in_worker, run, how): run for run in runs}
        try:
            for future in as_completed(futures):
                run = futures[future]
                try:
                    result = future.result()
                except Exception as e:
                    raise _naming_run(e, run.folder.name) from e
                diverged = result["status"] == "diverged"
                _say(progress or diverged, f"{run.head} {_ended_line(result)}")
        except BaseException:
            # A failed run or Ctrl-C: stop the runs in flight (they resume from their checkpoints)
            # and drop those not started; left alone, the pool would train them all first.
            # ProcessPoolExecutor has no public way to stop its workers before Python 3.14.
            for process in set(multiprocessing.active_children()) - before:
                process.terminate()
            pool.shutdown(cancel_futures=True)  # returns once the pool has seen its workers end
            raise


def _start_worker(threads: int | None) -> None:
    """Set a worker's share of the CPU's cores (None: on a GPU, torch's default).

    A worker shows no progress bar, so tqdm's lock there can be a thread lock: its default, a
    multiprocessing semaphore, would outlive a worker stopped by terminate() and be reported as
    leaked when the experiment exits."""
    from tqdm import tqdm

    if threads is not None:
        torch.set_num_threads(threads)
    tqdm.set_lock(threading.RLock())


def _naming_run(error: Exception, run: str) -> Exception:
    """A worker's exception with the run in its message: of the same class where that takes a
    message alone (the CLI prints ValueError and OSError as one line), else a RuntimeError."""
    message = f"run {run} failed: {error}"
    try:
        return type(error)(message)
    except Exception:  # a class that wants other arguments
        return RuntimeError(f"run {run} failed: {type(error).__name__}: {error}")


def _ended_line(result: Mapping[str, object]) -> str:
    """'finished, test error 8.91%, 41.2 min' or the divergence message."""
    if result["status"] == "diverged":
        return str(result["message"])
    parts = ["finished"]
    if result["test_error"] is not None:
        parts.append(f"test error {result['test_error']:.2f}%")
    if result["elapsed_s"] is not None:
        parts.append(f"{result['elapsed_s'] / 60:.1f} min")
    return ", ".join(parts)


def _write_result(
    folder: Path, spec: RunSpec, seed: int, recipe: Recipe, ended: dict[str, object]
) -> dict[str, object]:
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
        "steps": recipe.steps, "recipe": recipe.to_dict(), "cpu": cpu_name(),
        "ended": datetime.now(UTC).isoformat(timespec="seconds"),
    }  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=1, default=str) + "\n"
    atomic_write(folder / RESULT_FILE, lambda f: f.write(text.encode()))
    return result


def _say(enabled: bool, line: str) -> None:
    if enabled:
        print(line, flush=True)
