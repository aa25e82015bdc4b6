"""Time to accuracy: how long a run took to reach a test error, read from its run folder.

A run folder (`cnnlab train`) holds `metrics.jsonl`, one line per logged step with the epoch,
`train_s` (seconds spent training, evaluations left out) and, where the run evaluated,
`test_error`, and `config.json`, which names the model, the recipe and the machine. A run
reaches a target at the first evaluation whose test error is at or below it: the epoch and
the training time of that line are its time to accuracy. Runs evaluate every so often, so
this is an upper bound by at most one evaluation interval.

    metrics_rows           the JSON lines of a metrics.jsonl (plots.read_run reads them too)
    read_timeline          one run's test errors against epochs and training seconds
    reached                the first evaluation at or below a target error
    time_to_accuracy_table a markdown table: machine, epochs and minutes to the target, final
                           error (plots.plot_time_to_accuracy draws the same runs)
    seed_groups            the seeds of one run ("fast30-resnet20-s0", "-s1", ...) on one
                           machine, gathered so that a figure gives them one colour and label
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Reached", "SeedGroup", "Timeline", "machine_label", "metrics_rows", "read_timeline",
           "reached", "seed_groups", "time_to_accuracy_table"]  # fmt: skip


@dataclass(frozen=True)
class Timeline:
    """The test evaluations of one run: error (%) against epochs and training seconds."""

    name: str
    machine: str
    epochs: tuple[float, ...]
    seconds: tuple[float, ...]
    test_error: tuple[float, ...]
    split: str  # "test", or "val" where the run has no test evaluations


@dataclass(frozen=True)
class Reached:
    """Where a run first reached the target: its evaluation's epoch, seconds and error."""

    epoch: float
    seconds: float
    error: float


@dataclass(frozen=True)
class SeedGroup:
    """Runs that differ only by seed: one name ("fast30-resnet20, seeds 0, 1, 2"), one machine."""

    label: str
    members: tuple[Timeline, ...]


_SEED = re.compile(r"^(?P<base>.+)-s(?P<seed>\d+)$")


def seed_groups(timelines: Sequence[Timeline]) -> list[SeedGroup]:
    """Gather the seeds of a run: timelines named `<base>-s<seed>` with the same base, machine
    and split form one group, in the order their first member comes; any other timeline is a
    group of its own under its own name, and so is a lone seed."""
    groups: dict[tuple, list[tuple[Timeline, str]]] = {}
    for k, t in enumerate(timelines):
        match = _SEED.match(t.name)
        key = (match["base"], t.machine, t.split) if match else (k,)
        groups.setdefault(key, []).append((t, match["seed"] if match else ""))
    return [
        SeedGroup(
            f"{key[0]}, seeds {', '.join(seed for _, seed in members)}"
            if len(members) > 1
            else members[0][0].name,
            tuple(t for t, _ in members),
        )
        for key, members in groups.items()
    ]


def machine_label(machine: dict) -> str:
    """A short name for the machine a run's config.json records: the GPU's name, or the CPU
    with its name where recorded, instruction set and core count ("AMD EPYC CPU AVX512,
    native bf16, 2 cores"): two CPUs with the same instructions can differ in speed and in
    how bfloat16 rounds."""
    device = str(machine.get("device", ""))
    if device.startswith("cuda"):
        name = str(machine.get("device_name", "GPU"))
        return name.split(" (")[0]
    # "Intel(R) Xeon(R) Processor" -> "Intel Xeon"
    name = re.sub(r"\((R|TM)\)|\b(Processor|CPU)\b", "", str(machine.get("cpu") or ""))
    parts = [" ".join([*name.split(), "CPU"])]
    if machine.get("cpu_capability"):
        bf16 = {True: ", native bf16", False: ", no native bf16"}.get(machine.get("native_bf16"))
        parts.append(f"{machine['cpu_capability']}{bf16 or ''}")
    label = " ".join(parts)
    if machine.get("cpu_count"):
        label += f", {machine['cpu_count']} cores"
    return label


def _number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def metrics_rows(file: Path) -> list[dict]:
    """The lines of a run's metrics.jsonl that are JSON objects; an unreadable line (the last
    line of an interrupted run) is skipped with a warning.

    Raises:
        FileNotFoundError: no such file.
    """
    if not file.is_file():
        raise FileNotFoundError(f"no metrics.jsonl in {file.parent} (is it a run folder?)")
    rows = []
    for k, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            warnings.warn(f"{file}:{k}: not a JSON line, skipped", stacklevel=3)
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_timeline(run_dir: str | Path, name: str | None = None) -> Timeline:
    """The test evaluations of a run folder, with the machine of its config.json.

    Training seconds are `train_s` (evaluations left out); a line without it falls back to
    `elapsed_s`. Runs without test evaluations give their validation errors (split "val").

    Args:
        run_dir: a run folder written by `cnnlab train`.
        name: the run's label; default the folder's name.

    Raises:
        FileNotFoundError: no metrics.jsonl there.
        ValueError: no evaluation with a time in it.
    """
    folder = Path(run_dir)
    file = folder / "metrics.jsonl"
    rows = metrics_rows(file)
    split = "test" if any(_number(r.get("test_error")) for r in rows) else "val"
    points = []
    for r in rows:
        seconds = r.get("train_s", r.get("elapsed_s"))
        if _number(r.get(f"{split}_error")) and _number(seconds) and _number(r.get("epoch")):
            points.append((float(r["epoch"]), float(seconds), float(r[f"{split}_error"])))
    if not points:
        raise ValueError(f"{file}: no test or validation error with a training time")
    config = folder / "config.json"
    machine = "unknown machine"
    if config.is_file():
        machine = machine_label(json.loads(config.read_text()).get("machine") or {})
    epochs, seconds, errors = zip(*points, strict=True)
    return Timeline(name or folder.resolve().name, machine, epochs, seconds, errors, split)


def reached(timeline: Timeline, target: float) -> Reached | None:
    """The first evaluation at or below `target` (% error); None if the run never got there."""
    for epoch, seconds, error in zip(
        timeline.epochs, timeline.seconds, timeline.test_error, strict=True
    ):
        if error <= target:
            return Reached(epoch, seconds, error)
    return None


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f}"


def time_to_accuracy_table(timelines: Sequence[Timeline], target: float) -> str:
    """A markdown table, one row per run: machine, epochs and training minutes to `target`
    (a dash where it never got there), and the final error with its epoch and minutes."""
    lines = [
        f"| run | machine | epochs to {target:g}% | minutes to {target:g}% | final error "
        "| at epoch | minutes |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in timelines:
        got = reached(t, target)
        suffix = " (val)" if t.split == "val" else ""
        to = (f"{got.epoch:.1f}", _minutes(got.seconds)) if got else ("not reached", "-")
        lines.append(
            f"| {t.name}{suffix} | {t.machine} | {to[0]} | {to[1]} | {t.test_error[-1]:.2f}% "
            f"| {t.epochs[-1]:.1f} | {_minutes(t.seconds[-1])} |"
        )
    return "\n".join(lines)
