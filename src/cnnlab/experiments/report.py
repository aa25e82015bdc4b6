"""The report of an experiment: report.md and its PNG figures, read from the run folders alone.

    DIR/report.md             settings, the table (ours against the papers), the findings
    DIR/curves.png            training (dashed) and test (bold) error, one panel per group of
                              runs, side by side (He et al. 2015, Fig. 6 left and middle)
    DIR/error-vs-depth.png    final error against depth, with the paper's numbers (Table 6)
    DIR/responses.png         the std of each 3x3 layer's response on the test images, by
                              layer index and sorted (He et al. 2015, Fig. 7), from the runs'
                              final checkpoints

Links in report.md are relative, so the folder can be copied elsewhere (docs/results/) whole.

Numbers: the test error of the final weights (no model selection), and the training error
over the last 5% of steps (the running error of the augmented mini-batches that the paper's
dashed curves show). Over several seeds: mean and sample standard deviation (n - 1); the
curves are the mean curves. A finding is stated from the means; where the difference is
within one standard deviation, the report says so.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from cnnlab.analysis.features import spread_subset
from cnnlab.analysis.plots import DPI, RunCurves, curves_figure, plot_responses, read_run
from cnnlab.analysis.responses import RESPONSE_IMAGES, mean_responses, run_responses
from cnnlab.data import ArrayDataset, load_dataset
from cnnlab.experiments.definitions import Claim, Experiment, RunSpec, SpeedExperiment
from cnnlab.models.registry import Reported, list_models
from cnnlab.train.recipes import Recipe, get_recipe
from cnnlab.train.schedules import model_depth

__all__ = [
    "RESULT_FILE",
    "RunSummary",
    "Settings",
    "Stat",
    "claim_sentence",
    "final_train_error",
    "fixed_subset",
    "mean_curves",
    "mean_std",
    "plot_depth",
    "plot_panels",
    "plot_run_responses",
    "run_dir",
    "summarize",
    "write_report",
]

RESULT_FILE = "result.json"  # in a run folder, written atomically when the run has ended
TRAIN_WINDOW = 0.05  # the final training error is averaged over this fraction of the steps
METRIC_WORDS = {"test": "test", "train": "training"}


@dataclass(frozen=True)
class Settings:
    """What an experiment was asked for; the report states it."""

    data: str
    recipe: Recipe
    budget: float | None  # None: a number of steps was given instead
    seeds: int
    limit_train: int | None = None
    limit_test: int | None = None


def run_dir(out: str | Path, spec: RunSpec, seed: int) -> Path:
    """The run folder of a seed of a run: DIR/runs/<model>[-<option>]-s<seed>."""
    return Path(out) / "runs" / f"{spec.name}-s{seed}"


def fixed_subset(dataset: ArrayDataset, limit: int | None) -> ArrayDataset:
    """A fixed random subset of `limit` images (the same for every run and seed)."""
    if limit is None or limit >= len(dataset):
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))
    return dataset.subset(order[:limit].sort().values)


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (None for one value) of n values, in percent."""

    mean: float
    std: float | None
    n: int

    def text(self) -> str:
        return f"{self.mean:.2f}" if self.std is None else f"{self.mean:.2f} ± {self.std:.2f}"


def mean_std(values: Sequence[float]) -> Stat | None:
    """The mean and sample standard deviation (n - 1) of `values`; None when there are none."""
    values = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else None
    return Stat(statistics.fmean(values), std, len(values))


def final_train_error(curves: RunCurves, steps: int, window: float = TRAIN_WINDOW) -> float:
    """The training error over the last `window` of `steps` (each logged interval weighted by
    its number of steps).

    Raises:
        ValueError: the curves hold no training error.
    """
    if not curves.train_steps:
        raise ValueError(f"{curves.name}: no training error recorded")
    last = curves.train_steps[-1]
    start = last - max(1.0, window * steps)
    total = weight_sum = 0.0
    previous = 0
    for step, error in zip(curves.train_steps, curves.train_error, strict=True):
        if step > start:
            weight = step - max(previous, start)
            total += weight * error
            weight_sum += weight
        previous = step
    return total / weight_sum


def mean_curves(runs: Sequence[RunCurves], name: str) -> RunCurves:
    """The mean of several seeds' curves, step by step; the first seed's where steps differ."""
    first = runs[0]
    same = all((r.train_steps, r.test_steps) == (first.train_steps, first.test_steps) for r in runs)
    if not same:
        return RunCurves(name, first.train_steps, first.train_error, first.test_steps,
                         first.test_error, first.test_split)  # fmt: skip

    def mean(series: Sequence[tuple[float, ...]]) -> tuple[float, ...]:
        return tuple(float(v) for v in np.mean(np.array(series, dtype=float), axis=0))

    return RunCurves(
        name,
        first.train_steps,
        mean([r.train_error for r in runs]) if first.train_steps else (),
        first.test_steps,
        mean([r.test_error for r in runs]) if first.test_steps else (),
        first.test_split,
    )


@dataclass(frozen=True)
class RunSummary:
    """One row of the report: a run of the experiment over its seeds."""

    spec: RunSpec
    registered: bool
    test: Stat | None  # final test error over the finished seeds
    train: Stat | None  # final training error over the finished seeds
    finished: int
    diverged: int
    wall_s: float  # summed over the seeds, as the runs recorded it (resumes included)
    paper: Reported | None
    curves: RunCurves | None  # mean over the finished seeds
    configs: tuple[dict[str, Any], ...]  # config.json of each ended seed
    machines: tuple[str, ...]  # where each ended seed ran


def summarize(exp: Experiment, out: str | Path, seeds: int) -> list[RunSummary]:
    """Read the ended runs (result.json) of seeds 0 .. seeds - 1 of each run of `exp`."""
    registered = set(list_models())
    rows = []
    for spec in exp.runs:
        results, curves, configs, machines = [], [], [], []
        for seed in range(seeds):
            folder = run_dir(out, spec, seed)
            if not (folder / RESULT_FILE).exists():
                continue
            result = json.loads((folder / RESULT_FILE).read_text())
            results.append(result)
            if (folder / "config.json").exists():
                configs.append(json.loads((folder / "config.json").read_text()))
                machines.append(machine_text(configs[-1], result))
            if result["status"] == "finished":
                curves.append(read_run(folder, spec.name))
        finished = [r for r in results if r["status"] == "finished"]
        num_classes = len(configs[0]["classes"]) if configs else 10
        rows.append(
            RunSummary(
                spec=spec,
                registered=spec.model in registered,
                test=mean_std([r["test_error"] for r in finished]),
                train=mean_std([r["train_error"] for r in finished]),
                finished=len(finished),
                diverged=len(results) - len(finished),
                wall_s=sum(float(r.get("elapsed_s") or 0.0) for r in results),
                paper=spec.paper(num_classes),
                curves=mean_curves(curves, spec.name) if curves else None,
                configs=tuple(configs),
                machines=tuple(machines),
            )
        )
    return rows


def claim_sentence(
    claim: Claim,
    ours: Mapping[str, Mapping[str, Stat | None]],
    absent: Mapping[str, str] | None = None,
) -> str:
    """Whether a finding held, from the final errors.

    Args:
        claim: the finding.
        ours: run name -> {"test": Stat, "train": Stat}.
        absent: run name -> why it has no result ("not registered"), for the sentence.
    """
    word = METRIC_WORDS[claim.metric]
    a = ours.get(claim.run, {}).get(claim.metric)
    b = ours.get(claim.other, {}).get(claim.metric)
    if a is None or b is None:
        missing = [n for n, s in ((claim.run, a), (claim.other, b)) if s is None]
        why = "; ".join(f"{n} {(absent or {}).get(n, 'has no finished run')}" for n in missing)
        return f"{claim.run} vs {claim.other}: not compared ({why}); {claim.finding} unchecked."
    relation = "the same" if a.mean == b.mean else "lower" if a.mean < b.mean else "higher"
    held = relation == claim.relation
    numbers = f"{a.mean:.2f}% vs {b.mean:.2f}%"
    sentence = (
        f"{claim.run} ended with {relation} {word} error "
        f"{'as' if relation == 'the same' else 'than'} {claim.other} ({numbers}): "
        f"{claim.finding} ({claim.source}) {'held' if held else 'did not hold'} at this budget"
    )
    spreads = [s.std for s in (a, b) if s.std is not None]
    if relation != "the same" and spreads and abs(a.mean - b.mean) <= max(spreads):
        sentence += ", though the difference is within one standard deviation over seeds"
    return sentence + "."


# -- figures ---------------------------------------------------------------------------------


def _render(fig: Figure) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3]


def plot_panels(panels: Sequence[tuple[str, Sequence[RunCurves]]], path: Path) -> Path:
    """Curve figures (`plots.curves_figure`) side by side on a common error axis, as one PNG."""
    figures = [curves_figure(runs, title) for title, runs in panels]
    top = max(fig.axes[0].get_ylim()[1] for fig in figures)
    right = max(fig.axes[0].get_xlim()[1] for fig in figures)
    for fig in figures:
        fig.axes[0].set_ylim(0, top)
        fig.axes[0].set_xlim(0, right)
    images = [_render(fig) for fig in figures]
    height = max(im.shape[0] for im in images)
    images = [np.pad(im, ((0, height - im.shape[0]), (0, 0), (0, 0)), constant_values=255)
              for im in images]  # fmt: skip
    Image.fromarray(np.concatenate(images, axis=1)).save(path, format="PNG")
    return path


def plot_depth(rows: Sequence[RunSummary], path: Path, title: str) -> Path:
    """Final test (bold) and training (dashed) error against depth, per family of networks,
    with the paper's test errors as open markers."""
    families: dict[str, list[RunSummary]] = {}
    for row in rows:
        if model_depth(row.spec.model) is not None:
            family = re.sub(r"\d+$", "", row.spec.model) + "".join(
                f"-{v}" for _, v in row.spec.options
            )
            families.setdefault(family, []).append(row)
    fig = Figure(figsize=(7.0, 4.6), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for i, (family, members) in enumerate(families.items()):
        color = f"C{i % 10}"
        members = sorted(members, key=lambda r: model_depth(r.spec.model) or 0)
        tested = [r for r in members if r.test is not None]
        trained = [r for r in members if r.train is not None]
        papers = [r for r in members if r.paper is not None]
        if tested:
            ax.errorbar(
                [model_depth(r.spec.model) for r in tested],
                [r.test.mean for r in tested],
                yerr=[r.test.std or 0.0 for r in tested],
                color=color, linewidth=2.4, marker="o", capsize=3, label=f"{family}: ours, test",
            )  # fmt: skip
        if trained:
            ax.plot(
                [model_depth(r.spec.model) for r in trained],
                [r.train.mean for r in trained],
                "--", color=color, linewidth=1.0, marker=".", label=f"{family}: ours, training",
            )  # fmt: skip
        if papers:
            ax.plot(
                [model_depth(r.spec.model) for r in papers],
                [r.paper.value for r in papers],
                ":", color=color, marker="o", markerfacecolor="white",
                label=f"{family}: paper, test",
            )  # fmt: skip
    if not ax.lines:
        raise ValueError("no run with a depth and a result to plot")
    ax.set_xlabel("depth (weighted layers)")
    ax.set_ylabel("final error (%)")
    ax.set_ylim(bottom=0)
    ax.set_xticks(sorted({model_depth(r.spec.model) for m in families.values() for r in m}))
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()  # by family: errorbars come last otherwise
    pairs = sorted(zip(labels, handles, strict=True), key=lambda p: p[0])
    ax.legend([h for _, h in pairs], [label for label, _ in pairs], fontsize=8)
    ax.set_title(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=DPI)
    return path


# -- report.md -------------------------------------------------------------------------------


def duration_text(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    seconds = round(seconds)
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {s:02d}s"
    hours, m = divmod(minutes, 60)
    return f"{hours}h {m:02d}m"


def _schedule(recipe: Recipe) -> str:
    if recipe.schedule == "step":
        at = ", ".join(f"{m:,}" for m in recipe.lr_milestones) or "no step"
        text = f"lr {recipe.lr:g}, times {recipe.lr_gamma:g} at steps {at}"
    else:
        text = f"lr {recipe.lr:g}, {recipe.schedule} decay to 0"
    if recipe.warmup_steps:
        text += f" after a {recipe.warmup_steps:,}-step warm-up"
    if recipe.slow_start_lr is not None:
        text += (
            f"; {recipe.slow_start_lr:g} until the training error is below "
            f"{100 * recipe.slow_start_until_error:.0f}% for {recipe.slow_start_min_depth}+ layers"
        )
    return text


def machine_text(config: Mapping[str, Any], result: Mapping[str, Any]) -> str:
    """Where one run ran: "NVIDIA H100 (cuda:0), AMD EPYC 7R13 (16 CPUs), Linux-..., torch 2.x"."""
    m, v = config.get("machine", {}), config.get("versions", {})
    device = str(m.get("device", "?"))
    # config.json names the GPU on a GPU and only the architecture on a CPU; result.json the CPU.
    cpu = result.get("cpu") or m.get("device_name", "?")
    parts = [] if device == "cpu" else [f"{m.get('device_name', '?')} ({device})"]
    parts.append(f"{cpu} ({m.get('cpu_count', '?')} CPUs)")
    if device == "cpu":
        parts.append("trained on the CPU")
    parts += [str(m.get("platform", "?")), f"torch {v.get('torch', '?')}"]
    return ", ".join(parts)


def _machines(rows: Sequence[RunSummary]) -> str:
    seen = dict.fromkeys(m for row in rows for m in row.machines)  # in order, once each
    return "; ".join(seen) or "no run ended yet"


def _data_line(settings: Settings, rows: Sequence[RunSummary]) -> str:
    configs = [c for r in rows for c in r.configs]
    if not configs:
        return f"{settings.data}"
    c = configs[0]
    train = f"{c['train_images']:,} training images"
    if settings.limit_train:
        train += f" (a fixed random subset, --limit-train {settings.limit_train})"
    else:
        train += " (the whole train split)"
    test = f"{c['test_images']:,} test images"
    if settings.limit_test:
        test += f" (a fixed random subset, --limit-test {settings.limit_test})"
    return f"{settings.data}: {train}, {test}, {len(c['classes'])} classes"


def _ours(stat: Stat | None, row: RunSummary) -> str:
    if not row.registered:
        return "not registered"
    text = stat.text() if stat is not None else "—"
    if row.diverged:
        text += f" ({row.diverged} diverged)"
    return text


def _paper(row: RunSummary) -> str:
    if row.paper is not None:
        return f"{row.paper.value:.2f} ({row.paper.source})"
    return row.spec.note or "—"


def report_opening(exp: Experiment | SpeedExperiment) -> list[str]:
    """A report's first lines: its title, what it reproduces, and the head of its settings
    table (each report then adds its own rows)."""
    return [
        f"# {exp.title}",
        "",
        f"Reproduces {exp.source}. Made by `cnnlab experiment {exp.name}`; every number below "
        "is read from the run folders in `runs/`.",
        "",
        "| setting | value |",
        "|---|---|",
    ]


def write_report(
    exp: Experiment,
    out: str | Path,
    settings: Settings,
    *,
    cache_dir: str | Path | None = None,
) -> Path:
    """Write DIR/report.md and the figures from the run folders in `out`.

    The layer responses figure (an experiment's "responses") also reads the test split of
    `settings.data` (from the dataset cache in `cache_dir`, default cnnlab's).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = summarize(exp, out, settings.seeds)
    recipe = settings.recipe
    base = get_recipe(recipe.name).steps
    seeds = f"{settings.seeds} (seeds 0 to {settings.seeds - 1})" if settings.seeds > 1 else "1"
    budget = f"{recipe.steps / base:.4g}" if settings.budget is None else f"{settings.budget:g}"
    wall = sum(r.wall_s for r in rows)
    lines = [
        *report_opening(exp),
        f"| data | {_data_line(settings, rows)} |",
        f"| recipe | {recipe.name}, from {recipe.source}; batch {recipe.batch_size}, "
        f"{_schedule(recipe)}; {recipe.precision} |",
        f"| budget | {budget} of the recipe's {base:,} iterations: {recipe.steps:,} steps |",
        f"| seeds | {seeds} |",
        f"| machine | {_machines(rows)} |",
        f"| wall time | {duration_text(wall)} in all (training and evaluation, summed over runs) |",
        f"| written | {datetime.now(UTC).isoformat(timespec='seconds')} |",
        "",
        "## Results",
        "",
        "| run | paper: test error (%) | ours: test error (%) | ours: training error (%) "
        "| seeds | wall time |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.spec.name} | {_paper(r)} | {_ours(r.test, r)} | {_ours(r.train, r)} "
            f"| {r.finished} | {duration_text(r.wall_s) if r.wall_s else '—'} |"
        )
    lines += [
        "",
        "Ours: the final weights' error, mean ± sample standard deviation over the seeds "
        "(one number for one seed); training error over the last 5% of steps, on augmented "
        "mini-batches. Trained on the training split and evaluated on the test split with no "
        f"model selection, as the papers' numbers were ({exp.source}; He et al. 2015 used a "
        "45k/5k split only to choose the schedule, section 4.2).",
        "",
        "## Findings",
        "",
    ]
    ours = {r.spec.name: {"test": r.test, "train": r.train} for r in rows if r.test is not None}
    absent = {r.spec.name: "is not registered" for r in rows if not r.registered}
    lines += [f"- {claim_sentence(c, ours, absent)}" for c in exp.claims]
    if recipe.steps < base:
        lines += [
            "",
            f"At a budget of {budget} the networks train for a fraction of the paper's "
            "schedule: compare the ordering of the rows and the shape of the curves, not the "
            "numbers, with the paper's.",
        ]
    figures, notes = _figures(exp, out, rows, settings, cache_dir)
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{caption}]({path.name})\n\n{caption}\n" for path, caption in figures]
    notes = list(exp.notes) + notes
    unfinished = [r.spec.name for r in rows if r.registered and r.finished + r.diverged == 0]
    if unfinished:
        notes.insert(0, f"Not trained yet ({len(unfinished)} of {len(rows)} runs): "
                     f"{', '.join(unfinished)}; the same command trains them (the runs above "
                     "are kept) and writes this report again.")  # fmt: skip
    for r in rows:
        if not r.registered:
            paper = f" (paper: {_paper(r)})" if r.paper else ""
            notes.append(f"{r.spec.model} is not registered in cnnlab, so it was not run{paper}.")
    if notes:
        lines += ["", "## Notes", "", *(f"- {n}" for n in notes)]
    path = out / "report.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def _figures(
    exp: Experiment,
    out: Path,
    rows: Sequence[RunSummary],
    settings: Settings,
    cache_dir: str | Path | None,
) -> tuple[list[tuple[Path, str]], list[str]]:
    """The figures made (path, caption), and notes on those that could not be."""
    by_name = {r.spec.name: r for r in rows}
    made, notes = [], []
    seeds = settings.seeds
    mean = f", mean of {seeds} seeds" if seeds > 1 else ""
    for figure in exp.figures:
        if figure == "curves":
            panels = [
                (panel.title + mean, [by_name[n].curves for n in panel.runs if by_name[n].curves])
                for panel in exp.panels
            ]
            panels = [(t, runs) for t, runs in panels if runs]
            if panels:
                path = plot_panels(panels, out / "curves.png")
                made.append((path, "Training (dashed) and test (bold) error against iterations."))
        elif figure == "depth" and any(r.test is not None for r in rows):
            title = f"final error against depth{mean}"
            path = plot_depth(rows, out / "error-vs-depth.png", title)
            made.append((path, "Final test (bold) and training (dashed) error against depth; "
                               "open markers: the paper's test error."))  # fmt: skip
        elif figure == "responses":
            try:
                found = plot_run_responses(exp, out, settings, cache_dir=cache_dir)
            except (ValueError, OSError) as e:  # unreadable data or checkpoint: say so
                notes.append(f"The layer responses (Fig. 7) could not be drawn: {e}")
                continue
            if found is not None:
                path, images = found
                per = ", each line the mean over the run's finished seeds" if seeds > 1 else ""
                made.append((path, "Standard deviation of each 3x3 layer's response (after BN, "
                                   "before ReLU and addition) on "
                                   f"{images:,} test images, by layer index and sorted, as in "
                                   f"He et al. 2015, Fig. 7 (final weights{per}); plain nets "
                                   "dashed."))  # fmt: skip
    return made, notes


def plot_run_responses(
    exp: Experiment,
    out: str | Path,
    settings: Settings,
    *,
    cache_dir: str | Path | None = None,
    limit: int | None = RESPONSE_IMAGES,
) -> tuple[Path, int] | None:
    """DIR/responses.png: the layer responses (He et al. 2015, Fig. 7) of each run's finished
    seeds, averaged over the seeds, on `limit` images of the test split the runs were tested
    on (spread evenly over it).

    Returns:
        (the figure, the number of images), or None when no run has a finished seed with a
        checkpoint.

    Raises:
        ValueError, OSError: the data or a checkpoint cannot be read, or a network has no
            conv-BN layers (`responses.response_layers`).
    """
    out = Path(out)
    found = []
    for spec in exp.runs:
        folders = [
            run_dir(out, spec, seed)
            for seed in range(settings.seeds)
            if _finished(run_dir(out, spec, seed))
        ]
        if folders:
            found.append((spec.name, folders))
    if not found:
        return None
    test = load_dataset(settings.data, "test", cache_dir=cache_dir, progress=False)
    test = fixed_subset(test, settings.limit_test)
    images = test.images[spread_subset(len(test), limit)]
    responses = [
        mean_responses(run_responses(folders, images, names=[name] * len(folders)), name)
        for name, folders in found
    ]
    mean = f", mean of {settings.seeds} seeds" if settings.seeds > 1 else ""
    path = plot_responses(responses, out / "responses.png", f"layer responses{mean}")
    return path, images.shape[0]


def _finished(folder: Path) -> bool:
    """The run ended without diverging and kept its final checkpoint."""
    result = folder / RESULT_FILE
    if not (result.exists() and (folder / "checkpoint.pt").exists()):
        return False
    return json.loads(result.read_text()).get("status") == "finished"
