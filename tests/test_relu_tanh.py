"""ReLU against tanh (Krizhevsky et al. 2012, Fig. 1): convnet4, the loop's early end at a
training error, the learning-rate search, the report, and the experiment end to end.

The search and the report are checked against runs scripted here (a stand-in for `train` that
writes the metrics a run would, reaching 25% at a chosen step), so their numbers are known;
the experiment runs for real on a tiny image folder written here (a few steps of 8 images).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import cnnlab
from cnnlab.cli import main
from cnnlab.data import ArrayDataset
from cnnlab.experiments import (
    EXPERIMENTS,
    Outcome,
    RunSpec,
    SpeedExperiment,
    allowed_steps,
    fastest,
    get_experiment,
    next_lr,
    ratio_sentence,
    run_experiment,
    steps_to_error,
)
from cnnlab.experiments import speed as speed_module
from cnnlab.experiments.report import RESULT_FILE
from cnnlab.models.registry import Reported
from cnnlab.train import TrainingDiverged, get_recipe, load_checkpoint, train

pytestmark = pytest.mark.usefixtures("one_thread")


# -- the network -------------------------------------------------------------------------------


def test_convnet4_is_its_table() -> None:
    shapes = {}
    net = cnnlab.create_model("convnet4", activation="tanh")
    for name in ("pool1", "pool2", "pool3"):
        getattr(net, name).register_forward_hook(
            lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape[1:]))
        )
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    # cuda-convnet's pools: 3x3 at stride 2, covering the map: 32 -> 16 -> 8 -> 4.
    assert shapes == {"pool1": (32, 16, 16), "pool2": (32, 8, 8), "pool3": (64, 4, 4)}
    assert isinstance(net.pool1, nn.MaxPool2d) and isinstance(net.pool2, nn.AvgPool2d)
    assert [type(getattr(net, f"act{k}")) for k in (1, 2, 3)] == [nn.Tanh] * 3
    card = cnnlab.model_card("convnet4")
    assert card.params == 89_578 and card.input_size == 32
    assert "no exact architecture" in card.notes
    assert card.reported[0].value == 6.0 and "Fig. 1" in card.reported[0].source
    with pytest.raises(ValueError, match="'relu', 'tanh'"):
        cnnlab.create_model("convnet4", activation="sigmoid")


def test_relu_and_tanh_nets_differ_in_activation_and_gain_only() -> None:
    torch.manual_seed(0)
    relu = cnnlab.create_model("convnet4", activation="relu")
    torch.manual_seed(0)
    tanh = cnnlab.create_model("convnet4", activation="tanh")
    a, b = relu.state_dict(), tanh.state_dict()
    assert list(a) == list(b)
    # Drawn from the same numbers: each conv scaled by its activation's gain (5/3 against
    # sqrt(2)); the last layer, with no activation after it, and the biases alike.
    for k in ("conv1", "conv2", "conv3"):
        torch.testing.assert_close(b[f"{k}.weight"], a[f"{k}.weight"] * (5 / 3) / math.sqrt(2))
        assert not a[f"{k}.bias"].any() and not b[f"{k}.bias"].any()
    assert torch.equal(a["fc.weight"], b["fc.weight"])
    # N(0, gain^2 / fan_in): conv2 has 32 x 32 x 25 = 25,600 weights, enough for 2%.
    assert a["conv2.weight"].std().item() == pytest.approx(math.sqrt(2 / 800), rel=0.02)
    assert a["fc.weight"].std().item() == pytest.approx(math.sqrt(1 / 1024), rel=0.05)


# -- the loop ends at a training error -------------------------------------------------------


def tiny_data(n: int = 32, classes: int = 4, seed: int = 0) -> ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % classes
    return ArrayDataset(images, labels, tuple("abcd")[:classes])


def test_a_run_ends_at_the_training_error_asked(tmp_path: Path) -> None:
    data, recipe = tiny_data(), get_recipe("relu2012").replace(batch_size=8, steps=12)
    out = tmp_path / "run"
    # Every error is at or below 100%: the run ends at its first log point, as after its
    # last step (checkpoint written, completed there).
    result = train("convnet4", data, recipe, out=out, log_every=3, until_train_error=100.0,
                   progress=False)  # fmt: skip
    assert (result.reached_step, result.steps, result.completed) == (3, 3, True)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3]
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 3
    # Resuming a run that ended so trains nothing more.
    again = train("convnet4", data, recipe, out=out, log_every=3, until_train_error=100.0,
                  resume=True, progress=False)  # fmt: skip
    assert (again.reached_step, again.steps, again.completed) == (3, 3, True)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    # A level never reached: the run goes to its last step.
    full = train("convnet4", data, recipe, log_every=3, until_train_error=0.0, progress=False)
    assert (full.reached_step, full.steps, full.completed) == (None, 12, True)
    with pytest.raises(ValueError, match="percentage"):
        train("convnet4", data, recipe, until_train_error=250.0, progress=False)


# -- iterations to the threshold and the learning-rate search --------------------------------


def test_steps_to_error_is_the_first_log_point_at_or_below() -> None:
    steps = (39, 78, 117, 156, 195)
    assert steps_to_error(steps, (80.0, 41.0, 25.5, 25.0, 20.0), 25.0) == 156  # "at" counts
    assert steps_to_error(steps, (80.0, 24.9, 26.0, 23.0, 20.0), 25.0) == 78  # the first, noise too
    assert steps_to_error(steps, (80.0, 60.0, 50.0, 40.0, 30.0), 25.0) is None
    assert steps_to_error((), (), 25.0) is None


def reached(lr: float, steps: int, cap: int = 1000, error: float = 24.0) -> Outcome:
    return Outcome(lr, "reached", steps, cap, error)


def stopped(lr: float, steps: int, error: float, cap: int | None = None) -> Outcome:
    return Outcome(lr, "stopped", steps, cap or steps, error)


def test_ranking_fastest_first() -> None:
    a, b, c = reached(0.01, 500), reached(0.02, 400), reached(0.04, 400)
    d, e = stopped(0.08, 400, 30.0), Outcome(0.16, "diverged", 20, 1000, None)
    assert fastest([a, b, c, d, e]) is b  # fewest iterations; a tie goes to the smaller lr
    lower = reached(0.04, 400, error=23.0)  # at the same log point, further below: earlier
    assert fastest([a, b, lower]) is lower
    assert fastest([d, stopped(0.005, 1000, 28.0), e]).lr == 0.005  # none reached: lowest error
    assert fastest([e]) is e and fastest([]) is None
    assert allowed_steps(1000, [a, d, e]) == 500 and allowed_steps(1000, [d, e]) == 1000


GRID = (0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16)


def search(iterations: dict[float, int | None], cap: int = 1000) -> tuple[list[float], Outcome]:
    """The search against known iterations to the threshold per lr (None: never reaches):
    the lrs it tries, in order, and the one it chooses."""
    outcomes: dict[float, Outcome] = {}
    order = []
    while (lr := next_lr(GRID, outcomes)) is not None:
        allowed = allowed_steps(cap, outcomes.values())
        order.append(lr)
        need = iterations[lr]
        if need is not None and need <= allowed:
            outcomes[lr] = reached(lr, need, allowed)
        else:  # stopped at its allowance, the error lower the nearer the lr is to 0.02
            outcomes[lr] = stopped(lr, allowed, 30 + abs(math.log2(lr / 0.02)), allowed)
    return order, fastest(outcomes.values())


@pytest.mark.parametrize("best", GRID)
def test_search_finds_the_fastest_of_a_curve_with_one_minimum(best: float) -> None:
    # Iterations grow by a factor 1.5 per factor 2 away from `best`; beyond 0.08, divergence.
    iterations = {lr: round(100 * 1.5 ** abs(math.log2(lr / best))) for lr in GRID}
    iterations[0.16] = None if best != 0.16 else 100
    order, chosen = search(iterations)
    assert chosen.lr == best and chosen.steps == 100
    assert order[0] == 0.02  # the middle of the grid first
    i = GRID.index(best)
    neighbours = {GRID[j] for j in (i - 1, i + 1) if 0 <= j < len(GRID)}
    assert neighbours <= set(order)  # the choice was tried on both sides
    # The walk from the middle to the best and one step beyond it, and below the middle
    # first (the smaller neighbour is tried first): no other rate is tried.
    m = GRID.index(0.02)
    walk = GRID[max(0, i - 1) : m + 1] if i < m else GRID[m - 1 : i + 2]
    assert sorted(order) == list(walk)


def test_search_when_no_rate_reaches_the_threshold() -> None:
    order, chosen = search(dict.fromkeys(GRID))
    assert order == [0.02, 0.01, 0.04] and chosen.lr == 0.02 and not chosen.reached


def test_ratio_sentence_beside_the_papers() -> None:
    exp = get_experiment("relu-vs-tanh")
    relu, tanh = exp.ratio[1], exp.ratio[0]
    both = {relu: [reached(0.04, 1200), reached(0.04, 1000)], tanh: [reached(0.02, 6600)]}
    text = ratio_sentence(exp, both)
    assert text.startswith("**convnet4-tanh / convnet4-relu**, iterations to 25% training error")
    assert "**6.00**" in text  # 6600 / mean(1200, 1000)
    assert text.endswith("the paper: 6 (Krizhevsky et al. 2012, section 3.1, Fig. 1).")
    never = {relu: [reached(0.04, 1000)], tanh: [stopped(0.02, 15600, 31.0)]}
    assert "more than 15.60 (convnet4-tanh did not reach 25% within its cap of 15,600" in (
        ratio_sentence(exp, never)
    )
    assert "not measured (convnet4-relu" in ratio_sentence(exp, {relu: [stopped(0.04, 9, 30.0)]})


def test_relu_vs_tanh_is_defined_as_the_paper_says() -> None:
    exp = get_experiment("relu-vs-tanh")
    assert isinstance(exp, SpeedExperiment) and EXPERIMENTS["relu-vs-tanh"] is exp
    assert [r.options for r in exp.runs] == [(("activation", "relu"),), (("activation", "tanh"),)]
    assert {r.model for r in exp.runs} == {"convnet4"} and exp.threshold == 25.0
    assert exp.ratio == ("convnet4-tanh", "convnet4-relu") and exp.paper().value == 6.0
    assert all(b == 2 * a for a, b in zip(exp.lrs[:-1], exp.lrs[1:], strict=True))
    assert len(exp.lrs) >= 5
    r = get_recipe(exp.recipe)
    # "No regularization of any kind"; the paper's batch and momentum; a constant rate.
    assert (r.weight_decay, r.augment, r.label_smoothing, r.cutout, r.ema) == (0, False, 0, 0, 0)
    assert (r.batch_size, r.momentum, r.nesterov) == (128, 0.9, False)
    assert (r.schedule, r.lr_milestones, r.warmup_steps) == ("step", (), 0)
    assert r.lr == exp.lrs[len(exp.lrs) // 2]  # where the search starts
    with pytest.raises(ValueError, match="ascending"):
        SpeedExperiment("x", "x", "x", exp.runs, (0.1, 0.01), 25.0, exp.ratio, "relu2012")
    with pytest.raises(ValueError, match="ratio names no run"):
        SpeedExperiment("x", "x", "x", exp.runs, (0.1,), 25.0, ("a", "b"), "relu2012")


# -- the experiment, with scripted runs --------------------------------------------------------

RELU, TANH = (
    RunSpec("convnet4", (("activation", "relu"),)),
    RunSpec("convnet4", (("activation", "tanh"),)),
)
SMALL = SpeedExperiment(
    name="relu-vs-tanh",
    title="small",
    source="tests",
    runs=(RELU, TANH),
    lrs=(0.01, 0.02, 0.04, 0.08),
    threshold=25.0,
    ratio=(TANH.name, RELU.name),
    recipe="relu2012",
    paper_ratio=Reported("ratio", 6.0, "Fig. 1"),
)
# Steps to 25% by activation and lr (and + 2 * seed); None: diverges.
SCRIPT = {
    "relu": {0.01: 30, 0.02: 20, 0.04: 12, 0.08: None},
    "tanh": {0.01: 90, 0.02: 70, 0.04: 60, 0.08: 66},
}
CAP = 100


def scripted_train(calls: list[tuple[str, float, int, int]]):
    """A stand-in for `train`: logs every step an error falling linearly from 90% to 25% at the
    script's step, ending there (or at the cap), as the loop does; records each call."""

    def fake(model: str, data: ArrayDataset, recipe, *, out: Path, model_options, seed: int,
             log_every: int, until_train_error: float, resume: bool, **kwargs):  # fmt: skip
        act = model_options["activation"]
        calls.append((act, recipe.lr, seed, recipe.steps))
        need = SCRIPT[act][recipe.lr]
        out.mkdir(parents=True)
        config = {"train_images": len(data), "classes": list(data.classes),
                  "recipe": recipe.to_dict(), "machine": {"device": "cpu", "cpu_count": 2},
                  "versions": {"torch": "x"}}  # fmt: skip
        (out / "config.json").write_text(json.dumps(config))
        with (out / "metrics.jsonl").open("w") as f:
            for step in range(log_every, recipe.steps + 1, log_every):
                if need is None and step > 3:
                    raise TrainingDiverged("training diverged at step 4")
                error = 90.0 if need is None else max(0.0, 90 - 65 * step / (need + 2 * seed))
                f.write(json.dumps({"step": step, "train_error": error, "elapsed_s": step}) + "\n")
                if error <= until_train_error:
                    return type("R", (), {"reached_step": step})()
        return type("R", (), {"reached_step": None})()

    return fake


def learnable_folder(root: Path, classes: int = 4, per_class: int = 10) -> Path:
    """root/train/c<k>/<i>.png: 32x32 images whose colour tells the class, with noise."""
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (classes, 3))
    for k in range(classes):
        folder = root / "train" / f"c{k}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            noise = rng.integers(-40, 41, (32, 32, 3))
            pixels = np.clip(colours[k] + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return learnable_folder(tmp_path_factory.mktemp("data"))


@pytest.fixture(autouse=True)
def cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def report_table(report: Path, head: str) -> list[list[str]]:
    lines = report.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(head))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_search_caps_and_report_with_scripted_runs(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, float, int, int]] = []
    monkeypatch.setattr(speed_module, "train", scripted_train(calls))
    out = tmp_path / "exp"
    report = run_experiment(SMALL, folder, out, steps=CAP, batch_size=8, seeds=2, progress=False)
    # 40 images of 8: 5 steps an epoch, a log point each step. ReLU: 0.04 first (the grid's
    # upper middle) reaches at 12; 0.02 is stopped there (it needs 20); 0.08 diverges. tanh:
    # 0.04 at 60; 0.02 and 0.08 are stopped at 60. Seed 1 trains 0.04 again, to the cap.
    assert calls == [
        ("relu", 0.04, 0, CAP), ("relu", 0.02, 0, 12), ("relu", 0.08, 0, 12),
        ("relu", 0.04, 1, CAP),
        ("tanh", 0.04, 0, CAP), ("tanh", 0.02, 0, 60), ("tanh", 0.08, 0, 60),
        ("tanh", 0.04, 1, CAP),
    ]  # fmt: skip
    statuses = {
        p.parent.name: json.loads(p.read_text())["status"]
        for p in sorted((out / "runs").glob(f"*/{RESULT_FILE}"))
    }
    assert statuses == {
        "convnet4-relu-lr0.02-s0": "stopped", "convnet4-relu-lr0.04-s0": "reached",
        "convnet4-relu-lr0.04-s1": "reached", "convnet4-relu-lr0.08-s0": "diverged",
        "convnet4-tanh-lr0.02-s0": "stopped", "convnet4-tanh-lr0.04-s0": "reached",
        "convnet4-tanh-lr0.04-s1": "reached", "convnet4-tanh-lr0.08-s0": "stopped",
    }  # fmt: skip

    result = report_table(report, "| network | learning rate | iterations to 25% |")
    # Seeds 0 and 1: 12 and 14 steps (2.4 and 2.8 epochs of 5 steps); tanh 60 and 62.
    assert result == [
        ["convnet4-relu", "0.04", "13 ± 1", "2.6 ± 0.3", "2"],
        ["convnet4-tanh", "0.04", "61 ± 1", "12.2 ± 0.3", "2"],
    ]
    text = report.read_text()
    assert "**convnet4-tanh / convnet4-relu**, iterations to 25% training error: **4.69**" in text
    assert "the paper: 6 (Fig. 1)" in text
    search = report_table(report, "| network | learning rate | result |")
    assert [row[:4] for row in search] == [
        ["convnet4-relu", "0.02", "stopped at 12 steps (as many as a faster rate took)", "—"],
        ["convnet4-relu", "**0.04**", "reached, fastest", "12"],
        ["convnet4-relu", "0.08", "diverged", "—"],
        ["convnet4-tanh", "0.02", "stopped at 60 steps (as many as a faster rate took)", "—"],
        ["convnet4-tanh", "**0.04**", "reached, fastest", "60"],
        ["convnet4-tanh", "0.08", "stopped at 60 steps (as many as a faster rate took)", "—"],
    ]
    assert "| cap | 100 steps (20 epochs) a run" in text
    assert "taken every step (8 images, 5 times an epoch)" in text
    assert "40 training images (the whole train split)" in text
    for name in ("curves.png", "lr-search.png"):
        assert f"]({name})" in text
        with Image.open(out / name) as im:
            im.verify()

    # Rerun: every run ended, nothing is trained, the same report; other settings refused.
    calls.clear()
    assert run_experiment(SMALL, folder, out, steps=CAP, batch_size=8, seeds=2,
                          progress=False) == report  # fmt: skip
    assert calls == []
    with pytest.raises(ValueError, match="another --out"):
        run_experiment(SMALL, folder, out, steps=CAP, batch_size=16, progress=False)


def test_the_fastest_rate_at_the_grids_edge_is_flagged(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, float, int, int]] = []
    monkeypatch.setattr(speed_module, "train", scripted_train(calls))
    report = run_experiment(SMALL, folder, tmp_path / "exp", steps=CAP, batch_size=8,
                            lrs=(0.02, 0.04), progress=False)  # fmt: skip
    # The grid (0.02, 0.04): relu's fastest, 0.04, is its largest.
    assert [c[:2] for c in calls] == [("relu", 0.04), ("relu", 0.02), ("tanh", 0.04),
                                      ("tanh", 0.02)]  # fmt: skip
    text = report.read_text()
    assert "convnet4-relu's fastest learning rate, 0.04, is the grid's largest" in text
    assert "**5.00**" in text  # 60 / 12


# -- the experiment for real, and its command line -----------------------------------------------


def test_experiment_end_to_end_on_tiny_data(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "exp"
    args = ["experiment", "relu-vs-tanh", "--data", str(folder), "--out", str(out)]
    tiny = ["--steps", "6", "--batch-size", "8", "--lrs", "0.01,0.1", "-q"]
    assert main([*args, *tiny]) == 0
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert {"convnet4-relu-lr0.1-s0", "convnet4-tanh-lr0.1-s0"} <= set(runs)  # the start
    for name in runs:
        result = json.loads((out / "runs" / name / RESULT_FILE).read_text())
        assert result["status"] in ("reached", "stopped", "diverged")
        assert result["recipe"]["steps"] <= 6 and result["until_train_error"] == 25.0
        config = json.loads((out / "runs" / name / "config.json").read_text())
        assert config["recipe"]["weight_decay"] == 0 and config["recipe"]["precision"] == "fp32"
        assert config["model_options"]["activation"] in name
        rows = (out / "runs" / name / "metrics.jsonl").read_text().splitlines()
        steps = [json.loads(r)["step"] for r in rows]
        assert steps == list(range(1, len(steps) + 1))  # 5 steps an epoch: a log point each
    text = (out / "report.md").read_text()
    assert text.startswith("# ReLU against tanh: iterations to 25% training error on CIFAR-10")
    assert "**convnet4-tanh / convnet4-relu**" in text and "the paper: 6 (" in text
    assert "| cap | 6 steps (1.2 epochs) a run" in text and "trained on the CPU" in text
    ended = {name: (out / "runs" / name / RESULT_FILE).read_text() for name in runs}
    assert main([*args, *tiny]) == 0  # rerun: all ended, nothing trained again
    assert {name: (out / "runs" / name / RESULT_FILE).read_text() for name in runs} == ended


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--limit-test", "5"], "measures training error only"),
        (["--jobs", "2"], "one run after another: use --jobs 1"),
        (["--lrs", "0.1,0.01"], "positive and ascending"),
        (["--seeds", "0"], "seeds must be at least 1"),
    ],
)
def test_cli_refuses_what_the_race_does_not_take(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "exp"
    assert main(["experiment", "relu-vs-tanh", "--data", "nowhere", "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_cli_lrs_only_for_the_race(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "exp"
    args = ["experiment", "degradation", "--data", "nowhere", "--out", str(out)]
    assert main([*args, "--lrs", "0.1"]) == 2
    assert "--lrs is for a learning-rate search" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--lrs", "fast"])
