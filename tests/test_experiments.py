"""cnnlab.experiments: definitions, resumable runs, report.md and its figures, the CLI.

A tiny experiment (plain20, resnet20 with options A and B, resnet32 and a network that is not
registered) trained for 3 steps of 8 images on a 10-class image folder of 32x32 random images
written here; the findings' sentences and the statistics are checked on synthetic numbers.
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.analysis.plots import RunCurves
from cnnlab.cli import main
from cnnlab.experiments import (
    EXPERIMENTS,
    Claim,
    Experiment,
    Panel,
    RunSpec,
    Stat,
    claim_sentence,
    get_experiment,
    make_recipe,
    mean_std,
    run_experiment,
)
from cnnlab.experiments import run as run_module
from cnnlab.experiments.report import RESULT_FILE, final_train_error, mean_curves, run_dir
from cnnlab.models.registry import Reported, list_models
from cnnlab.train import TrainingDiverged, load_checkpoint, train

STEPS, BATCH, SEEDS = 3, 8, 2

TINY = Experiment(
    name="tiny",
    title="A tiny experiment",
    source="tests",
    runs=(
        RunSpec("plain20", note="curves only"),
        RunSpec("resnet20", (("shortcut", "A"),)),
        RunSpec("resnet20", (("shortcut", "B"),), card_number=False, note="not on CIFAR"),
        RunSpec("resnet32"),
        RunSpec("resnet999", reported=Reported("CIFAR-10 test error (%)", 1.23, "nowhere")),
    ),
    panels=(
        Panel("plain", ("plain20",)),
        Panel("residual", ("resnet20-A", "resnet20-B", "resnet32", "resnet999")),
    ),
    claims=(
        Claim("resnet32", "lower", "resnet20-A", "test", "the gain from depth", "Table 6"),
        Claim("resnet999", "lower", "resnet32", "test", "the gain from more depth", "nowhere"),
    ),
    figures=("curves", "depth", "responses"),
)
RUN_NAMES = ["plain20", "resnet20-A", "resnet20-B", "resnet32", "resnet999"]


pytestmark = pytest.mark.usefixtures("one_thread")


def write_image_folder(root: Path, counts: dict[str, int], classes: int = 10) -> Path:
    """root/<split>/c<k>/<i>.png: random 32x32 images, `counts[split]` per class."""
    rng = np.random.default_rng(0)
    for split, n in counts.items():
        for c in range(classes):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("data"), {"train": 2, "test": 1})


@pytest.fixture(autouse=True)
def cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def run_tiny(data: Path, out: Path, **kwargs: object) -> Path:
    options = {"steps": STEPS, "batch_size": BATCH, "seeds": SEEDS, "progress": False, **kwargs}
    return run_experiment(TINY, data, out, **options)


@pytest.fixture(scope="module")
def finished(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny experiment, run once for the module; copy it before changing it."""
    out = tmp_path_factory.mktemp("tiny") / "exp"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNLAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            run_tiny(data, out)
        finally:
            torch.set_num_threads(threads)
    return out


def table(report: Path) -> dict[str, list[str]]:
    """The Results table of report.md: run name -> its cells."""
    lines = report.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| run |"))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


# -- definitions -----------------------------------------------------------------------------


def test_definitions_name_registered_networks_and_papers_numbers() -> None:
    registered = set(list_models())
    for exp in EXPERIMENTS.values():
        missing = {r.model for r in exp.runs} - registered
        assert missing <= {"resnet164"}, (exp.name, missing)  # the only one allowed to lack
    deg = get_experiment("degradation")
    assert [r.name for r in deg.runs] == ["plain20", "plain56", "resnet20", "resnet56"]
    assert deg.run("resnet20").paper().value == 8.75
    assert deg.run("resnet56").paper().value == 6.97
    assert deg.run("plain56").paper() is None
    depth = get_experiment("depth")
    values = [depth.run(f"resnet{d}").paper().value for d in (20, 32, 44, 56, 110)]
    assert values == [8.75, 7.51, 7.17, 6.97, 6.43]  # Table 6
    sc = get_experiment("shortcuts")
    assert sc.run("resnet20-A").paper().value == 8.75
    assert sc.run("resnet20-B").paper() is None  # the card's number is option A's
    assert sc.run("resnet110").paper().value == 6.61  # He et al. 2016, Table 3
    assert sc.run("preact_resnet110").paper().value == 6.37
    assert sc.run("preact_resnet164").paper().value == 5.46
    assert sc.run("preact_resnet164").paper(100).value == 24.33
    assert sc.run("resnet20-B").options == (("shortcut", "B"),)


def test_definitions_are_checked() -> None:
    with pytest.raises(ValueError, match="name no run"):
        Experiment("x", "x", "x", runs=(RunSpec("resnet20"),), panels=(Panel("p", ("nope",)),))
    with pytest.raises(ValueError, match="repeat"):
        Experiment("x", "x", "x", runs=(RunSpec("resnet20"), RunSpec("resnet20")))
    with pytest.raises(ValueError, match="relation"):
        Claim("a", "smaller", "b", "test", "f", "s")
    with pytest.raises(ValueError, match="degradation"):
        get_experiment("nope")


def test_budget_scales_the_papers_schedule() -> None:
    full = make_recipe("he2015")
    assert (full.steps, full.lr_milestones) == (64_000, (32_000, 48_000))
    small = make_recipe("he2015", budget=0.01)
    assert (small.steps, small.lr_milestones) == (640, (320, 480))
    assert make_recipe("fast", steps=100, precision="fp32").precision == "fp32"
    with pytest.raises(ValueError, match="not both"):
        make_recipe(budget=0.5, steps=10)


# -- numbers and findings --------------------------------------------------------------------


def test_mean_and_sample_standard_deviation() -> None:
    s = mean_std([6.5, 6.7, 6.6, 6.4, 6.85])
    assert s.mean == pytest.approx(6.61)
    assert s.std == pytest.approx(float(np.std([6.5, 6.7, 6.6, 6.4, 6.85], ddof=1)))
    assert s.n == 5
    assert mean_std([7.0]) == Stat(7.0, None, 1)
    assert mean_std([]) is None
    assert Stat(6.61, 0.16, 5).text() == "6.61 ± 0.16"


def test_finding_follows_the_numbers() -> None:
    claim = Claim("plain56", "higher", "plain20", "train", "the degradation problem", "Fig. 1")
    held = claim_sentence(
        claim, {"plain56": {"train": Stat(9.0, None, 1)}, "plain20": {"train": Stat(7.5, None, 1)}}
    )
    assert held.startswith("plain56 ended with higher training error than plain20")
    assert "(9.00% vs 7.50%)" in held and "problem (Fig. 1) held at this budget" in held
    assert "standard deviation" not in held
    failed = claim_sentence(
        claim, {"plain56": {"train": Stat(6.0, None, 1)}, "plain20": {"train": Stat(7.5, None, 1)}}
    )
    assert "lower training error than plain20 (6.00% vs 7.50%)" in failed
    assert "did not hold" in failed
    noisy = claim_sentence(
        claim, {"plain56": {"train": Stat(7.6, 0.3, 3)}, "plain20": {"train": Stat(7.5, 0.2, 3)}}
    )
    assert " held" in noisy and "within one standard deviation" in noisy
    test_claim = Claim("resnet56", "lower", "resnet20", "test", "the gain", "Table 6")
    assert "resnet56 ended with lower test error" in claim_sentence(
        test_claim, {"resnet56": {"test": Stat(7, None, 1)}, "resnet20": {"test": Stat(8, None, 1)}}
    )
    missing = claim_sentence(
        test_claim, {"resnet20": {"test": Stat(8, None, 1)}}, {"resnet56": "is not registered"}
    )
    assert "not compared (resnet56 is not registered)" in missing


def test_final_training_error_is_the_last_five_percent() -> None:
    curves = RunCurves("r", (50, 100, 190, 200), (80.0, 60.0, 30.0, 10.0), (), (), "test")
    # The last 10 of 200 steps: all in the interval 190..200.
    assert final_train_error(curves, 200) == pytest.approx(10.0)
    # The last 20: 10 steps of the 100..190 interval at 30%, 10 of 190..200 at 10%.
    assert final_train_error(curves, 400) == pytest.approx(20.0)


def test_mean_curves_over_seeds() -> None:
    a = RunCurves("a", (1, 2), (10.0, 20.0), (2,), (30.0,), "test")
    b = RunCurves("b", (1, 2), (20.0, 40.0), (2,), (50.0,), "test")
    m = mean_curves([a, b], "m")
    assert (m.name, m.train_error, m.test_error) == ("m", (15.0, 30.0), (40.0,))


# -- running and reporting -------------------------------------------------------------------


def test_runs_report_and_figures(finished: Path) -> None:
    for spec in TINY.runs:
        for seed in range(SEEDS):
            folder = run_dir(finished, spec, seed)
            if spec.model == "resnet999":
                assert not folder.exists()
                continue
            assert folder.name == f"{spec.name}-s{seed}"
            result = json.loads((folder / RESULT_FILE).read_text())
            assert result["status"] == "finished" and result["steps"] == STEPS
            rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
            assert rows[-1]["step"] == STEPS and rows[-1]["test_error"] is not None
    assert load_checkpoint(run_dir(finished, TINY.run("resnet20-B"), 0) / "checkpoint.pt")[
        "model_options"
    ] == {"shortcut": "B"}

    report = finished / "report.md"
    rows = table(report)
    assert list(rows) == RUN_NAMES
    paper, ours_test, ours_train, seeds, _ = rows["resnet20-A"]
    assert paper == "8.75 (He et al. 2015, Table 6)"  # from the card
    assert rows["resnet32"][0] == "7.51 (He et al. 2015, Table 6)"
    assert rows["resnet20-B"][0] == "not on CIFAR"
    assert rows["plain20"][0] == "curves only"
    assert rows["resnet999"][:4] == ["1.23 (nowhere)", "not registered", "not registered", "0"]
    assert seeds == str(SEEDS)
    errors = [
        json.loads((run_dir(finished, TINY.run("resnet20-A"), s) / RESULT_FILE).read_text())
        for s in range(SEEDS)
    ]
    test = [e["test_error"] for e in errors]
    train_ = [e["train_error"] for e in errors]
    assert ours_test == f"{statistics.fmean(test):.2f} ± {statistics.stdev(test):.2f}"
    assert ours_train == f"{statistics.fmean(train_):.2f} ± {statistics.stdev(train_):.2f}"

    text = report.read_text()
    assert f"{STEPS} steps" in text and "batch 8" in text
    assert "20 training images" in text and "10 test images" in text
    assert "trained on the CPU" in text and "torch " in text
    assert "- resnet32 ended with " in text  # a finding computed from the numbers
    assert "resnet999 is not registered" in text
    assert "no model selection, as the papers' numbers were (tests; " in text  # its own source
    for name in ("curves.png", "error-vs-depth.png", "responses.png"):
        assert f"]({name})" in text  # a relative link: the folder can be copied whole
        with Image.open(finished / name) as im:
            im.verify()
            assert im.format == "PNG" and im.size[0] > 300
    assert "on 10 test images, by layer index and sorted" in text
    assert "each line the mean over the run's finished seeds" in text


def test_rerun_skips_ended_runs(
    finished: Path, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "exp"
    shutil.copytree(finished, out)
    (out / "report.md").unlink()

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(run_module, "train", no_training)
    run_tiny(data, out)
    assert list(table(out / "report.md")) == RUN_NAMES
    with pytest.raises(ValueError, match="another --out"):  # not silently mixed
        run_tiny(data, out, steps=STEPS + 1)
    with pytest.raises(ValueError, match="limit_train"):
        run_tiny(data, out, limit_train=10)


def test_interrupted_run_is_resumed(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exp = Experiment("mini", "mini", "tests", runs=(RunSpec("plain20"),), panels=())
    out = tmp_path / "exp"
    folder = run_dir(out, exp.runs[0], 0)
    # A run killed after its first step: a checkpoint, no result.json.
    from cnnlab.data import load_dataset

    recipe = make_recipe("he2015", steps=STEPS, batch_size=BATCH)
    train("plain20", load_dataset(data, "train", progress=False), recipe, out=folder,
          test_data=load_dataset(data, "test", progress=False), stop_after=1, eval_every=1,
          progress=False)  # fmt: skip
    assert load_checkpoint(folder / "checkpoint.pt")["step"] == 1
    assert not (folder / RESULT_FILE).exists()

    calls = []

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(kwargs["resume"])
        return train(*args, **kwargs)

    monkeypatch.setattr(run_module, "train", spy)
    run_experiment(exp, data, out, steps=STEPS, batch_size=BATCH, progress=False)
    assert calls == [True]
    assert json.loads((folder / RESULT_FILE).read_text())["status"] == "finished"
    assert load_checkpoint(folder / "checkpoint.pt")["step"] == STEPS
    assert json.loads((folder / "config.json").read_text())["resumes"][0]["step"] == 1


def test_report_only_trains_nothing_and_names_the_runs_left(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    claim = Claim("resnet20", "lower", "plain20", "test", "f", "s")
    runs = (RunSpec("plain20"), RunSpec("resnet20"))
    exp = Experiment("mini", "mini", "tests", runs=runs, panels=(), claims=(claim,))
    out = tmp_path / "exp"
    how = {"steps": STEPS, "batch_size": BATCH, "progress": False}
    # An experiment stopped part-way: plain20 ended, resnet20 never started.
    run_experiment(Experiment("mini", "mini", "tests", runs=exp.runs[:1], panels=()), data, out,
                   **how)  # fmt: skip
    monkeypatch.setattr(run_module, "train", lambda *a, **k: pytest.fail("trained"))
    report = run_experiment(exp, data, out, report_only=True, **how).read_text()
    assert "| resnet20 |" in report and "| plain20 |" in report
    assert "Not trained yet (1 of 2 runs): resnet20; the same command trains them" in report
    assert "resnet20 vs plain20: not compared (resnet20 has no finished run)" in report
    assert not run_dir(out, exp.runs[1], 0).exists()
    with pytest.raises(ValueError, match="--report-only is for experiments with a fixed set"):
        run_experiment("relu-vs-tanh", data, out, report_only=True, **how)


def test_diverged_run_is_reported_and_not_retried(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exp = Experiment("mini", "mini", "tests", runs=(RunSpec("resnet20"),))

    def diverge(*args: object, **kwargs: object) -> None:
        raise TrainingDiverged("training diverged at step 2")

    monkeypatch.setattr(run_module, "train", diverge)
    out = tmp_path / "exp"
    run_experiment(exp, data, out, steps=STEPS, batch_size=BATCH, progress=False)
    assert table(out / "report.md")["resnet20"][1] == "— (1 diverged)"
    result = json.loads((run_dir(out, exp.runs[0], 0) / RESULT_FILE).read_text())
    assert result["status"] == "diverged"


def test_cli(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    small = Experiment(
        "degradation",
        "degradation, small",
        "tests",
        runs=(RunSpec("plain20"), RunSpec("resnet20")),
        panels=(Panel("plain", ("plain20",)), Panel("residual", ("resnet20",))),
        claims=(Claim("resnet20", "lower", "plain20", "train", "easier optimisation", "Fig. 6"),),
    )
    monkeypatch.setitem(EXPERIMENTS, "degradation", small)
    out = tmp_path / "exp"
    args = ["experiment", "degradation", "--data", str(data), "--out", str(out)]
    quick = ["--steps", "2", "--batch-size", "8", "--recipe", "fast", "--limit-train", "16"]
    assert main([*args, *quick, "--limit-test", "5", "-q"]) == 0
    assert f"wrote {out / 'report.md'}" in capsys.readouterr().out
    assert list(table(out / "report.md")) == ["plain20", "resnet20"]
    text = (out / "report.md").read_text()
    assert "| recipe | fast, from " in text
    assert "16 training images (a fixed random subset" in text and "5 test images" in text
    with Image.open(out / "curves.png") as im:
        im.verify()
    assert main([*args, "--seeds", "0"]) == 2
    assert "seeds must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--budget", "0.1", "--steps", "3"])


# -- several runs at once (--jobs) -----------------------------------------------------------


def test_jobs_are_checked_before_anything_is_loaded_or_written(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("data loaded before the options were checked")

    monkeypatch.setattr(run_module, "load_dataset", no_loading)
    out = tmp_path / "exp"
    for jobs in (0, -1):
        with pytest.raises(ValueError, match=f"--jobs must be at least 1.*got {jobs}"):
            run_tiny(data, out, jobs=jobs)
    assert not out.exists()


def test_a_cpu_worker_takes_its_share_of_the_cores() -> None:
    before = torch.get_num_threads()
    try:
        run_module._start_worker(3)
        assert torch.get_num_threads() == 3
        run_module._start_worker(None)  # on a GPU: left as it is
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_jobs_train_in_worker_processes_as_in_order(
    finished: Path,
    data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """Runs of TINY in 2 processes on the CPU: three ended before (skipped),
    one interrupted (resumed in a worker), two new. Each ends as in `finished`, trained in order
    in this process with the same seeds on one thread: the same losses, bitwise the same weights."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the workers' torch threads: spawned, they inherit
    exp = Experiment("tiny", "tiny", "tests", runs=(*TINY.runs[:3], TINY.runs[4]))
    out = tmp_path / "exp"
    for spec, seed in (("plain20", 0), ("plain20", 1), ("resnet20-B", 1)):
        name = run_dir(out, exp.run(spec), seed).name
        shutil.copytree(finished / "runs" / name, out / "runs" / name)
    interrupted = run_dir(out, exp.run("resnet20-B"), 0)
    from cnnlab.data import load_dataset

    train("resnet20", load_dataset(data, "train", progress=False), make_recipe(steps=STEPS,
          batch_size=BATCH), out=interrupted, test_data=load_dataset(data, "test", progress=False),
          model_options={"shortcut": "B"}, stop_after=1, eval_every=1, log_every=1,
          progress=False)  # fmt: skip

    options = {"steps": STEPS, "batch_size": BATCH, "seeds": SEEDS, "device": "cpu"}
    report = run_experiment(exp, data, out, jobs=2, **options)
    lines = capsys.readouterr().out.splitlines()
    assert "[1/6] plain20-s0: ended before, skipped" in lines
    assert f"training 3 runs, 2 at a time on cpu, {STEPS} steps of {BATCH} each" in lines
    ended = sorted(line.split(":")[0] for line in lines if ": finished, test error " in line)
    assert ended == ["[3/6] resnet20-A-s0", "[4/6] resnet20-A-s1", "[5/6] resnet20-B-s0"]
    assert json.loads((interrupted / "config.json").read_text())["resumes"][0]["step"] == 1

    def losses(folder: Path) -> list[float]:
        return [
            json.loads(x)["train_loss"] for x in (folder / "metrics.jsonl").read_text().splitlines()
        ]

    keys = ("status", "test_error", "train_error", "steps", "model_options", "seed")
    for spec in exp.runs[:3]:
        for seed in range(SEEDS):
            ours, theirs = run_dir(out, spec, seed), run_dir(finished, spec, seed)
            result = json.loads((ours / RESULT_FILE).read_text())
            expected = json.loads((theirs / RESULT_FILE).read_text())
            assert {k: result[k] for k in keys} == {k: expected[k] for k in keys}, ours.name
            assert losses(ours) == losses(theirs), ours.name
            weights = load_checkpoint(ours)["model_state"]
            for k, v in load_checkpoint(theirs)["model_state"].items():
                assert torch.equal(weights[k], v), (ours.name, k)
    assert (out / "runs" / "plain20-s0" / RESULT_FILE).read_text() == (
        finished / "runs" / "plain20-s0" / RESULT_FILE
    ).read_text()  # skipped, not trained again
    assert list(table(report)) == ["plain20", "resnet20-A", "resnet20-B", "resnet999"]


def test_a_run_failing_in_a_worker_is_named(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    exp = Experiment("mini", "mini", "tests", runs=(RunSpec("resnet20"),))
    out = tmp_path / "exp"
    folder = run_dir(out, exp.runs[0], 0)
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(b"not a checkpoint")  # an interrupted run, damaged
    with pytest.raises(ValueError, match=r"^run resnet20-s0 failed: .*checkpoint\.pt"):
        run_experiment(exp, data, out, steps=STEPS, batch_size=BATCH, progress=False, jobs=2,
                       device="cpu")  # fmt: skip
    assert not (folder / RESULT_FILE).exists() and not (out / "report.md").exists()


def test_cli_refuses_jobs(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "exp"
    args = ["experiment", "degradation", "--data", str(data), "--out", str(out)]
    assert main([*args, "--jobs", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--jobs must be at least 1" in err
    assert not out.exists()
