"""benchmarks/recipe_sweep.py: variants x seeds of `cnnlab train`, final errors as mean +- std.

The statistics are checked against hand-worked numbers; one small sweep trains for real (two
variants, two seeds, a few steps on a tiny image folder) and is read back without training
again when rerun.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from types import ModuleType

import pytest

from cnnlab.train.hardware import threads_per_run
from conftest import load_benchmark
from test_train import make_image_folder


@pytest.fixture(scope="module")
def sweep() -> ModuleType:
    return load_benchmark("recipe_sweep")


def test_parse_variant(sweep: ModuleType) -> None:
    assert sweep.parse_variant("base=") == sweep.Variant("base", ())
    v = sweep.parse_variant("mix=-R cutout=8 --lr 0.4")
    assert v == sweep.Variant("mix", ("-R", "cutout=8", "--lr", "0.4"))
    for bad in ("noequals", "=--lr 1", "a/b=--lr 1"):
        with pytest.raises(argparse.ArgumentTypeError, match="NAME=ARGS"):
            sweep.parse_variant(bad)


def _run(folder: Path, steps: int, last_step: int, val: float | None) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"recipe": {"steps": steps}}))
    rows = [
        {"step": last_step // 2, "val_error": 50.0, "train_s": 1.0},
        {"step": last_step, "val_error": val, "test_error": 12.0, "train_s": 120.0},
    ]
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{")
    return folder


def test_final_errors_only_of_runs_that_ended(sweep: ModuleType, tmp_path: Path) -> None:
    got = sweep.final_errors(_run(tmp_path / "done", 100, 100, 11.5))
    assert got == {"val_error": 11.5, "test_error": 12.0, "train_s": 120.0}
    assert sweep.final_errors(_run(tmp_path / "half", 100, 60, 20.0)) is None
    assert sweep.final_errors(tmp_path / "missing") is None


def test_the_plan_goes_seed_by_seed_and_skips_runs_that_ended(
    sweep: ModuleType, tmp_path: Path
) -> None:
    a, b = sweep.Variant("a", ()), sweep.Variant("b", ("--lr", "0.4"))
    _run(tmp_path / "b-s0", 100, 100, 11.5)  # ended: not trained again
    _run(tmp_path / "a-s1", 100, 60, 20.0)  # interrupted: still to do (resumed)
    todo = sweep.plan([a, b], range(3), tmp_path)
    assert [folder.name for _, _, folder in todo] == ["a-s0", "a-s1", "b-s1", "a-s2", "b-s2"]
    assert [(v.name, s) for v, s, _ in todo] == [("a", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]


def test_report_tabulates_the_runs_that_ended_and_trains_nothing(
    sweep: ModuleType, tmp_path: Path, capsys
) -> None:
    _run(tmp_path / "a-s0", 100, 100, 11.0)
    _run(tmp_path / "a-s1", 100, 100, 13.0)
    _run(tmp_path / "b-s0", 100, 100, 12.0)
    _run(tmp_path / "b-s1", 100, 60, 20.0)  # stopped part way: left out, not trained
    argv = ["--data", str(tmp_path / "no-such-data"), "--out", str(tmp_path), "--seeds", "2",
            "--report", "--variant", "a=", "--variant", "b=--lr 0.4"]  # fmt: skip
    assert sweep.main(argv) == 0
    assert "0 runs to train" in capsys.readouterr().out
    rows = json.loads((tmp_path / "sweep.json").read_text())
    got = [(r["name"], r["seeds"], r["val_mean"]) for r in rows]
    assert got == [("a", 2, 12.0), ("b", 1, 12.0)]
    assert not (tmp_path / "b-s1" / "checkpoint.pt").exists()
    assert not list(tmp_path.glob("*.log"))


def test_summary_means_stds_and_difference_to_the_first(sweep: ModuleType) -> None:
    base, other = sweep.Variant("base", ()), sweep.Variant("cut", ("-R", "cutout=8"))
    results = {"base": [{"val_error": 12.0, "test_error": 13.0, "train_s": 60},
                        {"val_error": 14.0, "test_error": 13.5, "train_s": 180}],
               "cut": [{"val_error": 11.0, "test_error": 12.0, "train_s": 60},
                       {"val_error": 11.0, "test_error": 12.5, "train_s": 60},
                       {"val_error": 12.5, "test_error": 12.0, "train_s": 60}]}  # fmt: skip
    first, second = sweep.summarize([base, other], results)
    assert (first.val_mean, first.test_mean, first.minutes) == (13.0, 13.25, 2.0)
    assert first.val_std == pytest.approx(math.sqrt(2))
    assert first.val_delta is None
    assert second.val_mean == pytest.approx(11.5) and second.val_delta == pytest.approx(-1.5)
    # se = sqrt(var_a / n_a + var_b / n_b) = sqrt(2 / 2 + 0.75 / 3)
    assert second.val_delta_se == pytest.approx(math.sqrt(1 + 0.25))
    text = sweep.table([first, second])
    assert "| base | `(none)` | 2 | 13.00 +- 1.41 | 13.25 +- 0.35 | - | 2.0 |" in text
    assert "| cut | `-R cutout=8` | 3 | 11.50 +- 0.87 | 12.17 +- 0.29 | -1.50 (se 1.12) |" in text


def test_a_small_sweep_trains_and_resumes(
    sweep: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    data = make_image_folder(tmp_path / "data", train=10)
    out = tmp_path / "sweep"
    small = "--batch-size 8 --precision fp32"  # 27 training images: 4 steps an epoch
    argv = ["--data", str(data), "--out", str(out), "--epochs", "1", "--seeds", "2", "--jobs", "2",
            "--first-seed", "3", "--device", "cpu", "--variant", f"base={small}",
            "--variant", f"ls0.0={small} -R label_smoothing=0"]  # fmt: skip
    killed = _run(out / "base-s3", 4, 2, None)  # killed before its first checkpoint
    assert sweep.main(argv) == 0
    printed = capsys.readouterr().out
    assert "4 runs to train" in printed and "failed" not in printed
    assert sweep.final_errors(killed) is not None  # trained again from the start
    rows = json.loads((out / "sweep.json").read_text())
    assert [(r["name"], r["seeds"]) for r in rows] == [("base", 2), ("ls0.0", 2)]
    assert all(0 <= r["val_mean"] <= 100 and r["val_std"] is not None for r in rows)
    config = json.loads((out / "ls0.0-s4" / "config.json").read_text())
    assert (config["seed"], config["split"], config["recipe"]["label_smoothing"]) == (4, "45k", 0)
    assert config["machine"]["torch_threads"] == threads_per_run(2, os.cpu_count())
    assert (out / "ls0.0-s4.log").is_file()  # a dot in the name stays in the log's name
    assert sweep.main(argv) == 0  # everything ended: read back, nothing trained
    assert "0 runs to train" in capsys.readouterr().out


def test_report_of_a_variant_never_run_is_refused_and_writes_nothing(
    sweep: ModuleType, tmp_path: Path, capsys
) -> None:
    _run(tmp_path / "a-s0", 100, 100, 11.0)
    (tmp_path / "sweep.md").write_text("the table of the sweep\n")
    argv = ["--data", "x", "--out", str(tmp_path), "--seeds", "1", "--report",
            "--variant", "a=", "--variant", "typo=--lr 0.4"]  # fmt: skip
    with pytest.raises(SystemExit):
        sweep.main(argv)
    assert "no run of typo" in capsys.readouterr().err
    assert (tmp_path / "sweep.md").read_text() == "the table of the sweep\n"
    assert not (tmp_path / "sweep.json").exists()
