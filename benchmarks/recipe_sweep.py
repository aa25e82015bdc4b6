"""Recipe variants side by side, several seeds each: validation and test error, mean +- std.

For tuning a recipe without looking at the test split (issue 8): every variant is trained on
the paper's 45k images (`--split 45k`) and chosen by its error on the 5k validation images;
the test error is printed beside it, for the record. A variant is a name and the `cnnlab
train` options that make it (`-R KEY=VALUE` recipe fields, `--lr`, `--batch-size`, `-O`);
each is trained with seeds 0 .. --seeds - 1 by `python -m cnnlab train` processes, --jobs at
once. On a CPU each gets its share of the cores (cnnlab.train.hardware.threads_per_run):
--jobs 2 on two cores trains 1.17x the images/s of one run. On one H200, 4 or 6 resnet20 runs
at once trained 57,000 to 60,000 images/s together, about what one alone trained on an H100
(53,000): the CUDA-graph step already keeps the GPU busy (docs/results/issue8-proxies).

Run folders are OUT/<variant>-s<seed>; a run that ended is read, not trained again, and an
interrupted one is resumed, so rerunning the same command finishes a sweep. Runs are trained
seed by seed (every variant's first seed, then every variant's second, ...), so a sweep cut
short still compares its variants on the same seeds; `--report` trains nothing and tabulates
the runs that ended (a sweep stopped at a deadline, or trained on another machine).

    python benchmarks/recipe_sweep.py --data ../shared/datasets/cifar10-jpeg.tar.gz \\
        --out runs/sweep --epochs 30 --seeds 5 --jobs 4 \\
        --variant base= --variant cutout8="-R cutout=8" --variant lr0.4="--lr 0.4"

The table gives, per variant, the final validation and test error (mean +- sample standard
deviation over seeds) and the validation difference to the first variant with its standard
error (the two means' standard errors combined): a difference of less than about two
standard errors is not a decision. Written to OUT/sweep.json and OUT/sweep.md as well.

Once a recipe is chosen, `--split full` trains it on all 50k images for its test error over
seeds (no validation images, so no difference column: nothing is chosen on the test split),
and leaving out --epochs trains each variant for its recipe's own length (`--recipe he2015`:
the paper's 164 epochs).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from cnnlab.analysis.time_to_accuracy import metrics_rows
from cnnlab.train.hardware import threads_per_run
from cnnlab.train.loop import run_started


@dataclass(frozen=True)
class Variant:
    """A name and the `cnnlab train` arguments that make the variant."""

    name: str
    args: tuple[str, ...]


@dataclass(frozen=True)
class Summary:
    """A variant's final errors over its seeds (%), and its validation difference to the
    first variant with that difference's standard error."""

    name: str
    args: str
    seeds: int
    val_mean: float | None
    val_std: float | None
    test_mean: float | None
    test_std: float | None
    val_delta: float | None
    val_delta_se: float | None
    minutes: float


def parse_variant(text: str) -> Variant:
    """NAME=ARGS, e.g. 'cutout8=-R cutout=8' (ARGS split as a shell would; may be empty)."""
    name, sep, args = text.partition("=")
    if not sep or not name or "/" in name:
        raise argparse.ArgumentTypeError(
            f"a variant is NAME=ARGS (e.g. cutout8='-R cutout=8', or base= for none), got {text!r}"
        )
    return Variant(name, tuple(shlex.split(args)))


def final_errors(run: Path) -> dict[str, float] | None:
    """The final validation and test error of a run folder that ended; None if it has not.

    A run ended when its last metrics line is at the recipe's last step (config.json) and
    carries an evaluation."""
    config, metrics = run / "config.json", run / "metrics.jsonl"
    if not (config.is_file() and metrics.is_file()):
        return None
    steps = json.loads(config.read_text())["recipe"]["steps"]
    with warnings.catch_warnings():  # an interrupted run's last line: it has not ended
        warnings.simplefilter("ignore")
        rows = metrics_rows(metrics)
    if not rows or rows[-1].get("step") != steps:
        return None
    last = rows[-1]
    if last.get("val_error") is None and last.get("test_error") is None:
        return None
    return {"val_error": last.get("val_error"), "test_error": last.get("test_error"),
            "train_s": last.get("train_s") or 0.0}  # fmt: skip


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def summarize(variants: Sequence[Variant], results: dict[str, list[dict]]) -> list[Summary]:
    """One Summary per variant from its runs' final errors (`final_errors` of each seed)."""
    rows: list[Summary] = []
    base_val: list[float] = []
    for k, v in enumerate(variants):
        runs = results.get(v.name, [])
        val = [r["val_error"] for r in runs if r.get("val_error") is not None]
        test = [r["test_error"] for r in runs if r.get("test_error") is not None]
        if k == 0:
            base_val = val
        val_mean, val_std = _mean_std(val)
        test_mean, test_std = _mean_std(test)
        delta = se = None
        if k > 0 and val and base_val:
            delta = statistics.fmean(val) - statistics.fmean(base_val)
            if len(val) > 1 and len(base_val) > 1:
                se = math.sqrt(statistics.variance(val) / len(val)
                               + statistics.variance(base_val) / len(base_val))  # fmt: skip
        minutes = statistics.fmean([r["train_s"] for r in runs]) / 60 if runs else 0.0
        rows.append(Summary(v.name, " ".join(v.args) or "(none)", len(runs), val_mean, val_std,
                            test_mean, test_std, delta, se, minutes))  # fmt: skip
    return rows


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.2f}" + (f" +- {std:.2f}" if std is not None else "")


def table(rows: Sequence[Summary]) -> str:
    """A markdown table of `summarize`'s rows."""
    lines = ["| variant | options | seeds | val error (%) | test error (%) | val vs first "
             "| minutes a run |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        delta = "-" if r.val_delta is None else f"{r.val_delta:+.2f}"
        if r.val_delta_se is not None:
            delta += f" (se {r.val_delta_se:.2f})"
        lines.append(f"| {r.name} | `{r.args}` | {r.seeds} | {_pm(r.val_mean, r.val_std)} "
                     f"| {_pm(r.test_mean, r.test_std)} | {delta} | {r.minutes:.1f} |")  # fmt: skip
    return "\n".join(lines)


def run_folder(out: Path, variant: Variant, seed: int) -> Path:
    """Where the run of `variant` with `seed` is trained: OUT/<variant>-s<seed>."""
    return out / f"{variant.name}-s{seed}"


def plan(
    variants: Sequence[Variant], seeds: Sequence[int], out: Path
) -> list[tuple[Variant, int, Path]]:
    """The runs still to train, seed by seed: every variant's seed 0, then every variant's seed
    1, ..., so that a sweep stopped part way (a deadline, a lost machine) leaves its variants
    with the same seeds, a paired comparison, rather than some variants with all and others
    with none."""
    todo = [(v, s, run_folder(out, v, s)) for s in seeds for v in variants]
    return [t for t in todo if final_errors(t[2]) is None]


def train_command(args: argparse.Namespace, variant: Variant, seed: int, run: Path) -> list[str]:
    """The `cnnlab train` command line of one run, with --resume where the run was started:
    from its checkpoint, or afresh when it was killed before writing one (`cnnlab train` refuses
    a started folder without --resume)."""
    cmd = [sys.executable, "-m", "cnnlab", "train", args.model, "--data", args.data,
           "--split", args.split, "--seed", str(seed), "--out", str(run), "-q",
           *variant.args]  # fmt: skip
    if args.epochs is not None:
        cmd += ["--epochs", str(args.epochs)]
    if args.device:
        cmd += ["--device", args.device]
    if run_started(run):
        cmd.append("--resume")
    return cmd


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="cifar10, or a path (the JPEG copy)")
    p.add_argument("--out", required=True, help="folder of the run folders (rerun to resume)")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--epochs", type=float, help="default: the recipe's own length")
    p.add_argument("--split", choices=("45k", "full"), default="45k",
                   help="45k (default): tune on the 5k validation images; full: the 50k, for "
                   "the test error of a recipe already chosen")  # fmt: skip
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0,
                   help="seeds are first-seed .. first-seed + seeds - 1 (default 0)")  # fmt: skip
    p.add_argument("--jobs", type=int, default=1, help="runs at once (default 1)")
    p.add_argument("--device", help="passed to cnnlab train (default: the GPU if any)")
    p.add_argument("--variant", type=parse_variant, action="append", required=True,
                   metavar="NAME=ARGS", help="repeatable; the first is the baseline")  # fmt: skip
    p.add_argument("--report", action="store_true",
                   help="train nothing: tabulate the runs that ended (a sweep stopped at a "
                   "deadline, or trained on another machine)")  # fmt: skip
    args = p.parse_args(argv)
    names = [v.name for v in args.variant]
    if len(set(names)) != len(names):
        p.error(f"variant names must differ, got {names}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    never = [v.name for v in args.variant if not any(run_folder(out, v, s).is_dir() for s in seeds)]
    if args.report and never:  # a misspelt name would otherwise overwrite the sweep's table
        p.error(f"--report: no run of {', '.join(never)} under {out} (folders NAME-sSEED): check "
                "the variant names and --seeds; nothing written")  # fmt: skip
    todo = [] if args.report else plan(args.variant, seeds, out)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    threads = threads_per_run(args.jobs) if args.device in (None, "cpu") else None
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)  # each run's share of the CPU

    def run(item: tuple[Variant, int, Path]) -> tuple[str, int]:
        variant, seed, folder = item
        cmd = train_command(args, variant, seed, folder)
        with open(folder.parent / f"{folder.name}.log", "a") as log:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
        print(f"{folder.name}: {'ended' if rc == 0 else f'failed (exit {rc}), see its .log'}",
              flush=True)  # fmt: skip
        return folder.name, rc

    print(f"{len(todo)} runs to train, {args.jobs} at once", flush=True)
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        failed = [name for name, rc in pool.map(run, todo) if rc != 0]
    results = {v.name: [r for s in seeds
                        if (r := final_errors(run_folder(out, v, s))) is not None]
               for v in args.variant}  # fmt: skip
    rows = summarize(args.variant, results)
    text = table(rows)
    print(text)
    (out / "sweep.md").write_text(text + "\n")
    (out / "sweep.json").write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
