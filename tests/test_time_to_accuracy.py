"""Time to accuracy: the first evaluation at or below a target, read from run folders, as a
table and a figure (`cnnlab visualize time-to-accuracy`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from matplotlib.colors import to_hex
from PIL import Image

from cnnlab.analysis.plots import time_to_accuracy_figure
from cnnlab.analysis.time_to_accuracy import (
    Timeline,
    machine_label,
    reached,
    read_timeline,
    seed_groups,
    time_to_accuracy_table,
)
from cnnlab.cli import main

CPU = {"device": "cpu", "cpu_capability": "AVX2", "native_bf16": False, "cpu_count": 2}
GPU = {"device": "cuda:0", "device_name": "NVIDIA H100 80GB HBM3 (compute capability 9.0)"}


def _run(folder: Path, evals: list[tuple[float, float, float]], machine: dict,
         split: str = "test") -> Path:  # fmt: skip
    """A run folder: training lines every half epoch, an evaluation (epoch, seconds, error)
    where `evals` has one, and a config.json naming the machine."""
    folder.mkdir(parents=True)
    lines = []
    for epoch, seconds, error in evals:
        lines.append({"step": int(epoch * 100) - 50, "epoch": epoch - 0.5, "train_error": 50.0,
                      "train_s": seconds - 1, "test_error": None})  # fmt: skip
        lines.append({"step": int(epoch * 100), "epoch": epoch, "train_error": 40.0,
                      "train_s": seconds, "elapsed_s": seconds + 30,
                      f"{split}_error": error})  # fmt: skip
    text = "\n".join(json.dumps(r) for r in lines) + '\n{"step": 9'  # an interrupted last line
    (folder / "metrics.jsonl").write_text(text)
    (folder / "config.json").write_text(json.dumps({"model": "resnet20", "machine": machine}))
    return folder


def test_reached_is_the_first_evaluation_at_or_below_the_target(tmp_path: Path) -> None:
    run = _run(tmp_path / "fast", [(1, 60, 30.0), (2, 120, 11.9), (3, 180, 11.0)], CPU)
    with pytest.warns(UserWarning, match="not a JSON line"):
        t = read_timeline(run)
    assert t.epochs == (1, 2, 3) and t.seconds == (60, 120, 180)  # train_s, not elapsed_s
    got = reached(t, 11.9)
    assert got is not None and (got.epoch, got.seconds, got.error) == (2, 120, 11.9)
    assert reached(t, 10.9) is None


def test_table_gives_epochs_minutes_machine_and_never_reached(tmp_path: Path) -> None:
    fast = _run(tmp_path / "fast", [(10, 600, 14.0), (20, 1200, 11.5), (30, 1800, 11.2)], CPU)
    slow = _run(tmp_path / "slow", [(82, 90, 12.5), (164, 180, 12.3)], GPU)
    with pytest.warns(UserWarning):
        table = time_to_accuracy_table([read_timeline(fast), read_timeline(slow)], 11.9)
    rows = table.splitlines()
    assert rows[0].startswith("| run | machine | epochs to 11.9% | minutes to 11.9%")
    assert rows[2] == ("| fast | CPU AVX2, no native bf16, 2 cores | 20.0 | 20.0 | 11.20% "
                       "| 30.0 | 30.0 |")  # fmt: skip
    assert rows[3] == "| slow | NVIDIA H100 80GB HBM3 | not reached | - | 12.30% | 164.0 | 3.0 |"


def test_validation_errors_where_a_run_has_no_test_evaluations(tmp_path: Path) -> None:
    run = _run(tmp_path / "tune", [(5, 100, 20.0), (10, 200, 12.0)], CPU, split="val")
    with pytest.warns(UserWarning):
        t = read_timeline(run)
    assert t.split == "val" and t.test_error == (20.0, 12.0)
    assert "| tune (val) |" in time_to_accuracy_table([t], 15)


def test_machine_labels() -> None:
    assert machine_label(GPU) == "NVIDIA H100 80GB HBM3"
    assert machine_label({"device": "cpu", "cpu_capability": "AVX512", "native_bf16": True,
                          "cpu_count": 16}) == "CPU AVX512, native bf16, 16 cores"  # fmt: skip
    assert machine_label({"device": "cpu"}) == "CPU"
    xeon = {"device": "cpu", "cpu": "Intel(R) Xeon(R) Processor", "cpu_capability": "AVX512",
            "native_bf16": True, "cpu_count": 2}  # fmt: skip
    assert machine_label(xeon) == "Intel Xeon CPU AVX512, native bf16, 2 cores"
    assert machine_label({**xeon, "cpu": "AMD EPYC"}).startswith("AMD EPYC CPU AVX512")


def test_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        read_timeline(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "train_error": 50}\n')
    with pytest.raises(ValueError, match="no test or validation error"):
        read_timeline(tmp_path)


def test_cli_writes_the_figure_and_prints_the_table(tmp_path: Path, capsys) -> None:
    a = _run(tmp_path / "a", [(1, 30, 20.0), (2, 60, 11.0)], CPU)
    b = _run(tmp_path / "b", [(1, 5, 25.0), (2, 10, 13.0)], GPU)
    out = tmp_path / "tta.png"
    with pytest.warns(UserWarning):
        assert main(["visualize", "time-to-accuracy", str(a), str(b), "--target", "11.9",
                     "--out", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "| a | CPU AVX2, no native bf16, 2 cores | 2.0 | 1.0 | 11.00%" in printed
    assert "| b | NVIDIA H100 80GB HBM3 | not reached |" in printed
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 300


@pytest.mark.parametrize("n", [2, 17, 40])
def test_the_legend_stands_beside_the_curves_and_inside_the_figure(n: int) -> None:
    # With 16 runs, each labelled with its machine, a legend inside the axes covered most of
    # the curves on docs/results/time-to-accuracy.
    runs = [Timeline(f"fast{i}-resnet20", "Intel Xeon CPU AVX512, native bf16, 2 cores",
                     (10.0, 20.0), (600.0, 1200.0), (20.0, 11.0 + i / 100), "test")
            for i in range(n)]  # fmt: skip
    fig = time_to_accuracy_figure(runs, 11.9)
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend()
    box, axes_box = legend.get_window_extent(), ax.get_window_extent()
    assert len(legend.get_texts()) == n + 1  # every run and the target
    assert box.x0 >= axes_box.x1  # beside the axes, not over them
    assert box.x1 <= fig.bbox.x1 and box.y0 >= fig.bbox.y0 and box.y1 <= fig.bbox.y1


def test_the_seeds_of_a_run_on_one_machine_share_a_colour_and_a_legend_entry() -> None:
    xeon, zen = "Intel Xeon CPU AVX512, no native bf16, 2 cores", "AMD EPYC CPU AVX512, 2 cores"

    def run(name: str, machine: str = xeon) -> Timeline:
        return Timeline(name, machine, (10.0, 30.0), (600.0, 1800.0), (20.0, 12.0), "test")

    runs = [run("fast30-resnet20-s0"), run("he2015-resnet20"), run("fast30-resnet20-s1"),
            run("fast30-resnet20-s2"), run("fast30-resnet20-s3", zen),
            run("fast30-s1-resnet56")]  # fmt: skip
    groups = seed_groups(runs)
    assert [g.label for g in groups] == ["fast30-resnet20, seeds 0, 1, 2", "he2015-resnet20",
                                         "fast30-resnet20-s3", "fast30-s1-resnet56"]  # fmt: skip
    assert groups[0].members == (runs[0], runs[2], runs[3])
    legend = time_to_accuracy_figure(runs, 11.9).axes[0].get_legend()
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == [f"fast30-resnet20, seeds 0, 1, 2: {xeon}", f"he2015-resnet20: {xeon}",
                      f"fast30-resnet20-s3: {zen}", f"fast30-s1-resnet56: {xeon}",
                      "target 11.9%"]  # fmt: skip
    lines = time_to_accuracy_figure(runs, 11.9).axes[0].get_lines()
    colour = {line.get_label(): to_hex(line.get_color()) for line in lines}
    seeds = [to_hex(line.get_color()) for line in lines if line.get_label().startswith("_")]
    assert seeds == [colour[labels[0]]] * 2  # seeds 1 and 2 drawn in seed 0's colour
    assert len({colour[label] for label in labels[:4]}) == 4
