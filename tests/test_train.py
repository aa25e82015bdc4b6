"""cnnlab.train: schedules at their milestones, exact resume, divergence, checkpoints, the CLI.

Tiny data made here (8x8 random images for the loop, a 32x32 image-folder tree for the CLI)
and a tiny network registered for the duration of a test, so that the whole file runs in
seconds on two CPU cores.
"""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlab.cli import main
from cnnlab.data import ArrayDataset
from cnnlab.models import registry
from cnnlab.train import (
    FAST,
    HE2015,
    CheckpointError,
    Recipe,
    SlowStart,
    TrainingDiverged,
    get_recipe,
    learning_rate,
    load_checkpoint,
    save_checkpoint,
    train,
)
from cnnlab.train.loop import check_run_folder, run_started

CLASSES = tuple("abcdefghij")


class TinyNet(nn.Module):
    """conv-bn-relu, global pool, dropout, fc: BN buffers and dropout randomness, in 300 weights.

    `poison_after` > 0 makes the logits NaN from that training forward on (divergence tests);
    `fixed_input` replaces the pool by a flatten sized for 8x8 inputs (input-size tests).
    """

    def __init__(
        self,
        num_classes: int = 10,
        bn: bool = True,
        dropout: float = 0.1,
        poison_after: int = 0,
        fixed_input: bool = False,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=not bn)
        self.bn = nn.BatchNorm2d(8) if bn else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(8 * 8 * 8 if fixed_input else 8, num_classes)
        self.fixed_input = fixed_input
        self.poison_after = poison_after
        self.calls = 0

    def features(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn(self.conv(x)))
        return x.flatten(1) if self.fixed_input else F.adaptive_avg_pool2d(x, 1).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        logits = self.fc(self.dropout(self.features(x)))
        if self.training and self.poison_after:
            self.calls += 1
            if self.calls >= self.poison_after:
                logits = logits * float("nan")
        return logits


class TinyAux(TinyNet):
    """TinyNet with an auxiliary head, trained through `forward_with_aux` as GoogLeNet is."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(num_classes, dropout=0.0)
        self.aux = nn.Linear(8, num_classes)

    def forward_with_aux(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.features(x)
        return self.fc(h), self.aux(h)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register the tiny networks for one test (names ending in a depth, as the zoo's do)."""
    registry._ensure_loaded()
    for name, builder in (("tinynet", TinyNet), ("tinynet110", TinyNet), ("tinyaux", TinyAux)):
        monkeypatch.setitem(registry._BUILDERS, name, builder)
        card = registry.ModelCard(
            name=name, family="test", paper="-", input_size=8, num_classes=10, params=0, macs=0
        )
        monkeypatch.setitem(registry._CARDS, name, card)


def make_data(n: int = 64, size: int = 8, seed: int = 0, classes: int = 10) -> ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    return ArrayDataset(images, labels, CLASSES[:classes])


def small(recipe: Recipe, steps: int = 12, **changes: object) -> Recipe:
    return recipe.replace(batch_size=8, **changes).with_steps(steps)


# -- recipes and schedules -------------------------------------------------------------------


def test_he2015_schedule_at_its_milestones() -> None:
    # Section 4.2: 0.1, divided by 10 at 32k and 48k iterations, stop at 64k.
    assert (HE2015.batch_size, HE2015.steps, HE2015.momentum) == (128, 64_000, 0.9)
    assert HE2015.weight_decay == 1e-4
    expected = {0: 0.1, 31_999: 0.1, 32_000: 0.01, 47_999: 0.01, 48_000: 0.001, 63_999: 0.001}
    for step, lr in expected.items():
        assert learning_rate(HE2015, step) == pytest.approx(lr, rel=1e-12), step


def test_warmup_then_decay_to_zero() -> None:
    recipe = FAST
    w = recipe.warmup_steps
    assert learning_rate(recipe, 0) == pytest.approx(recipe.lr / w)
    assert learning_rate(recipe, w - 1) == pytest.approx(recipe.lr)
    assert learning_rate(recipe, w) == pytest.approx(recipe.lr)
    after = [learning_rate(recipe, t) for t in range(w, recipe.steps)]
    assert all(a > b for a, b in zip(after, after[1:], strict=False))
    assert 0 < after[-1] < recipe.lr / 100
    cosine = Recipe(**{**recipe.__dict__, "schedule": "cosine"})
    assert learning_rate(cosine, w + (recipe.steps - w) // 2) == pytest.approx(recipe.lr / 2, 1e-2)


def test_slow_start_rule_of_he2015() -> None:
    # 110 layers and deeper: 0.01 until the training error is below 80%, then 0.1 for good.
    assert SlowStart.for_model(HE2015, "resnet110").active
    assert SlowStart.for_model(HE2015, "preact_resnet1001").active
    assert not SlowStart.for_model(HE2015, "resnet56").active
    assert not SlowStart.for_model(FAST, "resnet110").active
    slow = SlowStart.for_model(HE2015, "resnet110")
    for _ in range(200):  # chance level on 10 classes: stays slow
        slow.update(0.9, HE2015)
        assert learning_rate(HE2015, 10, slow) == 0.01
    steps = 0
    while slow.active:
        slow.update(0.6, HE2015)
        steps += 1
    assert 1 < steps < 50
    assert learning_rate(HE2015, 10, slow) == 0.1
    slow.update(1.0, HE2015)  # the rule never switches back
    assert not slow.active
    assert learning_rate(HE2015, 40_000, slow) == pytest.approx(0.01)


def test_recipe_scaling_and_overrides() -> None:
    half = HE2015.scaled(0.5)
    assert (half.steps, half.lr_milestones) == (32_000, (16_000, 24_000))
    assert HE2015.replace(steps=6_400, lr=0.05).lr_milestones == (3_200, 4_800)
    assert HE2015.replace(batch_size=None, lr=None) == HE2015
    by_epochs = HE2015.with_epochs(2, train_size=50_000)
    assert by_epochs.steps == 2 * (50_000 // 128)
    fast = FAST.with_steps(FAST.steps * 2)
    assert fast.warmup_steps == 2 * FAST.warmup_steps
    assert Recipe.from_dict(json.loads(json.dumps(FAST.to_dict()))) == FAST
    assert get_recipe("he2015") is HE2015


@pytest.mark.parametrize(
    "change",
    [
        {"batch_size": 0},
        {"precision": "fp16"},
        {"schedule": "exponential"},
        {"lr": -0.1},
        {"lr_milestones": (48_000, 32_000)},
        {"label_smoothing": 1.5},
        {"flip": "sometimes"},
        {"cutout": -1},
        {"pad": -1},
        {"pad_mode": "wrap"},
        {"zero_init_residual": 1},
        {"bn_momentum": 0.0},
        {"bn_momentum": 1.5},
        {"clean_final": -0.1},
        {"clean_final": 1.5},
        {"nesterov": "yes"},
        {"optimizer": "adam"},
        {"muon_lr": 0.0},
        {"muon_momentum": 1.0},
        {"bn_bias_lr_scale": 0.0},
        {"bn_bias_lr_scale": float("inf")},
        {"head_lr_scale": -1.0},
        {"sam_rho": -0.05},
        {"sam_rho": float("nan")},
    ],
)
def test_out_of_range_recipe_is_a_clear_error(change: dict[str, object]) -> None:
    key = next(iter(change))
    with pytest.raises(ValueError, match=key):
        HE2015.replace(**change)


@pytest.mark.parametrize("pad", [0, 1, 4])
def test_memory_batches_shift_images_by_at_most_the_recipes_pad(pad: int) -> None:
    from cnnlab.data import ArrayDataset
    from cnnlab.train.batches import MemoryBatches
    from cnnlab.train.distributed import DistEnv

    # Each image is one bright pixel at (8, 8) of a 16x16 map; a shift of s rows moves it to
    # row 8 + s, and a shift of s columns to column 8 + s, or 7 - s when mirrored.
    images = torch.zeros(64, 3, 16, 16, dtype=torch.uint8)
    images[:, :, 8, 8] = 255
    data = ArrayDataset(images, torch.zeros(64, dtype=torch.int64), ("a",))
    recipe = FAST.replace(batch_size=64, pad=pad)
    x, _ = MemoryBatches(data, recipe, seed=0, device=torch.device("cpu"), env=DistEnv()).get(0)
    where = x[:, 0].flatten(1).argmax(1)
    rows, cols = where // 16, where % 16
    assert (x[:, 0].flatten(1).amax(1) == 255).all()  # no shift reaches 8: every crop has it
    assert rows.min() == 8 - pad and rows.max() == 8 + pad  # 64 draws reach both ends
    assert cols.min() >= 7 - pad and cols.max() <= 8 + pad


def test_memory_batches_pad_as_the_recipe_says() -> None:
    from cnnlab.data import crop_flip, crop_flip_params
    from cnnlab.train.batches import MemoryBatches, epoch_order, make_generator
    from cnnlab.train.distributed import DistEnv

    data = make_data(64, 16)
    for mode in ("zeros", "reflect"):
        recipe = FAST.replace(batch_size=64, pad_mode=mode)
        x, _ = MemoryBatches(data, recipe, 0, torch.device("cpu"), DistEnv()).get(0)
        g = make_generator(0, "augment", 0, torch.device("cpu"))
        params = crop_flip_params(64, 4, generator=g)
        images = data.images[epoch_order(64, 0, 0)]
        assert torch.equal(x, crop_flip(images, *params, padding=4, mode=mode)), mode


def test_memory_batches_leave_the_last_clean_final_steps_unaugmented() -> None:
    from cnnlab.train.batches import MemoryBatches, epoch_order
    from cnnlab.train.distributed import DistEnv

    data = make_data(64, 16)
    recipe = FAST.replace(batch_size=64, steps=10, cutout=4, clean_final=0.2)
    batches = MemoryBatches(data, recipe, seed=0, device=torch.device("cpu"), env=DistEnv())
    for step in range(10):
        x, y = batches.get(step)
        order = epoch_order(len(data), 0, step)  # one batch an epoch: all 64 images
        assert torch.equal(y, data.labels[order])
        as_they_are = data.images[order]
        # Steps 0..7 crop, flip and cut out; the last 2 of 10 (a fifth) see the images as is.
        assert torch.equal(x, as_they_are) == (step >= 8), step


def test_a_run_from_before_a_field_existed_has_its_default() -> None:
    from cnnlab.train.recipes import describe_differences

    saved = {k: v for k, v in FAST.to_dict().items() if k != "pad"}  # as written before it
    assert describe_differences(saved, FAST.to_dict()) is None
    assert describe_differences(saved, FAST.replace(pad=2).to_dict()) == ("pad=4", "pad=2")
    assert describe_differences(FAST.to_dict(), {**FAST.to_dict(), "seed": 1}) == (
        "seed=None",
        "seed=1",
    )
    # A recipe whose source text was reworded trains the same: its runs resume.
    assert describe_differences({**saved, "source": "as worded before"}, FAST.to_dict()) is None
    # fast until 2026-12-06 trained every weight with SGD: its runs resume only as they were.
    before = {**FAST.to_dict(), "optimizer": "sgd", "muon_lr": 0.02}
    assert describe_differences(before, FAST.to_dict()) == (
        "optimizer='sgd', muon_lr=0.02",
        "optimizer='auto', muon_lr=0.04",
    )
    assert describe_differences(before, FAST.replace(optimizer="sgd").to_dict()) is None
    muon = {**before, "optimizer": "muon"}
    assert describe_differences(muon, FAST.replace(optimizer="muon").to_dict()) == (
        "muon_lr=0.02",
        "muon_lr=0.04",
    )


def test_unknown_recipe_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="he2015"):
        get_recipe("paper")


# -- the loop --------------------------------------------------------------------------------


def _weights(path: Path) -> dict[str, Tensor]:
    return load_checkpoint(path)["model_state"]


def _assert_same_state(a: Path, b: Path) -> None:
    sa, sb = load_checkpoint(a), load_checkpoint(b)
    assert sa["step"] == sb["step"]
    assert sa["model_state"].keys() == sb["model_state"].keys()
    for key in sa["model_state"]:
        assert torch.equal(sa["model_state"][key], sb["model_state"][key]), key
    for pa, pb in zip(
        sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values(), strict=True
    ):
        assert torch.equal(pa["momentum_buffer"], pb["momentum_buffer"])


def _rows(run: Path) -> list[dict[str, object]]:
    timing = ("images_per_s", "elapsed_s", "train_s")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in timing} for line in lines]


def test_zero_init_residual_is_applied_by_the_recipe(tmp_path: Path) -> None:
    recipe = small(FAST.replace(zero_init_residual=True), steps=1)
    result = train("resnet20", make_data(16, 32), recipe, out=tmp_path / "r", device="cpu",
                   progress=False)  # fmt: skip
    # One warm-up step moves the zeroed scales by at most a few thousandths; the others stay
    # near 1.
    last = [b.bn2.weight.abs().max().item() for b in result.model.layer1]
    first = [b.bn1.weight.abs().min().item() for b in result.model.layer1]
    assert max(last) < 0.05 and min(first) > 0.9
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["recipe"]["zero_init_residual"] is True
    with pytest.raises(ValueError, match="zero_init_residual is for the ResNets"):
        train("plain20", make_data(16, 32), recipe, out=tmp_path / "p", device="cpu",
              progress=False)  # fmt: skip


def test_whiten_init_starts_the_first_conv_from_the_training_images(tmp_path: Path) -> None:
    from cnnlab.data import Normalize
    from cnnlab.models.registry import create_model
    from cnnlab.train.whitening import whiten_first_conv

    data = make_data(16, 32)
    recipe = FAST.replace(whiten_init=True, lr=1e-8, muon_lr=1e-8)
    recipe = small(recipe, steps=1)  # a step that moves nothing
    result = train("resnet20", data, recipe, out=tmp_path / "r", device="cpu", progress=False)
    expected = create_model("resnet20")
    whiten_first_conv(expected, data.images, Normalize.fit(data.images, "channel"))
    # Muon (fast's optimizer) keeps each filter bank at a fixed norm: the whitened filters'
    # directions are what the first convolution starts from.
    got, want = result.model.conv1.weight.detach().float(), expected.conv1.weight
    torch.testing.assert_close(got / got.norm(), want / want.norm(), rtol=1e-4, atol=1e-5)
    plain = train("resnet20", data, small(FAST, steps=1), out=tmp_path / "p", device="cpu",
                  progress=False)  # fmt: skip
    assert not torch.allclose(plain.model.conv1.weight.detach().float(), expected.conv1.weight)


def test_bn_momentum_is_set_on_every_batch_norm_by_the_recipe(tmp_path: Path) -> None:
    data = make_data(16, 32)
    moved = train("resnet20", data, small(FAST.replace(bn_momentum=1.0), steps=1),
                  out=tmp_path / "m", device="cpu", progress=False)  # fmt: skip
    norms = [m for m in moved.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 19 and {m.momentum for m in norms} == {1.0}
    assert json.loads((tmp_path / "m" / "config.json").read_text())["recipe"]["bn_momentum"] == 1.0
    # Momentum 1 keeps only the last batch's statistics; the network's own 0.1 keeps 0.9 of
    # the initial ones (mean 0, variance 1), so after one step the two differ.
    own = train("resnet20", data, small(FAST, steps=1), out=tmp_path / "o", device="cpu",
                progress=False)  # fmt: skip
    assert {m.momentum for m in own.model.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.1}
    assert not torch.allclose(own.model.bn1.running_var, moved.model.bn1.running_var)
    assert torch.allclose(own.model.bn1.running_var - 0.9, 0.1 * (moved.model.bn1.running_var))


@pytest.mark.parametrize(
    ("model", "size", "recipe"),
    [
        ("tinynet", 8, FAST),
        ("tinynet110", 8, HE2015),
        ("resnet20", 32, FAST),
        ("tinynet", 8, FAST.replace(flip="alternate", cutout=4)),
        ("resnet20", 32, FAST.replace(ema=0.9)),
        ("tinynet", 8, FAST.replace(lookahead_steps=3)),  # checkpoint at 4: slow and fast differ
        ("resnet20", 32, FAST.replace(optimizer="muon")),  # momentum buffers of both kinds
    ],
)
def test_killed_run_resumes_to_the_same_weights(
    tiny: None, tmp_path: Path, model: str, size: int, recipe: Recipe
) -> None:
    # 64 images at batch 8: 12 steps cross an epoch boundary. Stopping before step 7 loses
    # steps 4..6 (the checkpoint is at step 4), as a kill would; the resumed run redoes them.
    data, val, test = make_data(64, size), make_data(16, size, 1), make_data(16, size, 2)
    kwargs = dict(
        val_data=val, test_data=test, device="cpu", eval_every=8, checkpoint_every=4,
        log_every=2, progress=False, seed=3,
    )  # fmt: skip
    straight = train(model, data, small(recipe), out=tmp_path / "a", **kwargs)
    assert straight.completed and straight.steps == 12
    first = train(model, data, small(recipe), out=tmp_path / "b", stop_after=7, **kwargs)
    assert not first.completed and load_checkpoint(tmp_path / "b")["step"] == 4
    second = train(model, data, small(recipe), out=tmp_path / "b", resume=True, **kwargs)
    assert second.completed and second.steps == 12
    for name in ("checkpoint.pt", "best.pt"):
        _assert_same_state(tmp_path / "a" / name, tmp_path / "b" / name)
    assert _rows(tmp_path / "a") == _rows(tmp_path / "b")
    assert second.test_error == straight.test_error
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert [r["step"] for r in config["resumes"]] == [4]


def test_slow_start_in_the_loop(tiny: None, tmp_path: Path) -> None:
    # Random labels on 10 classes: the error stays near 90%, so a 110-layer name keeps 0.01.
    recipe = small(HE2015, steps=640)
    data = make_data()
    deep = train("tinynet110", data, recipe, log_every=1, stop_after=3, progress=False)
    shallow = train("tinynet", data, recipe, log_every=1, stop_after=3, progress=False)
    assert [r["lr"] for r in deep.metrics] == [0.01] * 3
    assert [r["lr"] for r in shallow.metrics] == [0.1] * 3


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny: None, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(
        TrainingDiverged, match=r"diverged.*good checkpoint .*checkpoint\.pt \(step 4\)"
    ):
        train(
            "tinynet", make_data(), small(FAST), out=run, model_options={"poison_after": 6},
            checkpoint_every=2, eval_every=100, log_every=2, device="cpu", progress=False,
        )  # fmt: skip
    state = load_checkpoint(run)
    assert state["step"] == 4
    assert all(torch.isfinite(t).all() for t in state["model_state"].values())
    assert [r["step"] for r in _rows(run)] == [2, 4]
    assert not [p for p in run.iterdir() if p.name.startswith(".")]


def test_absurd_learning_rate_diverges(tmp_path: Path) -> None:
    recipe = small(HE2015, steps=30, lr=1e12, lr_milestones=())
    with pytest.raises(TrainingDiverged, match="lower --lr"):
        train("resnet20", make_data(32, 32), recipe, log_every=1, device="cpu", progress=False)


def test_auxiliary_heads_are_trained(tiny: None) -> None:
    data = make_data()
    recipe = small(HE2015, steps=3, weight_decay=0.0)
    torch.manual_seed(0)
    untrained = TinyAux()
    trained = train("tinyaux", data, recipe, device="cpu", progress=False).model
    silent = train("tinyaux", data, recipe.replace(aux_weight=0.0), progress=False).model
    assert not torch.equal(trained.aux.weight, untrained.aux.weight)
    assert torch.equal(silent.aux.weight, untrained.aux.weight)


def test_model_that_does_not_take_the_image_size(tiny: None) -> None:
    with pytest.raises(ValueError, match=r"12x12 images .*8x8"):
        train(
            "tinynet", make_data(size=12), small(FAST), model_options={"fixed_input": True},
            progress=False,
        )  # fmt: skip


def test_run_folder_is_not_overwritten_and_resume_checks_the_run(
    tiny: None, tmp_path: Path
) -> None:
    run, data = tmp_path / "run", make_data()
    train("tinynet", data, small(FAST, steps=4), out=run, progress=False)
    with pytest.raises(ValueError, match="already holds a run"):
        train("tinynet", data, small(FAST, steps=4), out=run, progress=False)
    with pytest.raises(CheckpointError, match="checkpoint of tinynet, not tinynet110"):
        train("tinynet110", data, small(FAST, steps=4), out=run, resume=True, progress=False)
    with pytest.raises(ValueError, match="steps=4.*steps=8"):
        train("tinynet", data, small(FAST, steps=8), out=run, resume=True, progress=False)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train("tinynet", data, small(FAST), out=tmp_path / "empty", resume=True, progress=False)


@pytest.mark.parametrize("name", ["checkpoint.pt", "config.json", "metrics.jsonl"])
def test_any_of_a_runs_files_marks_its_folder_started(tmp_path: Path, name: str) -> None:
    assert not run_started(tmp_path / "absent") and not run_started(tmp_path)
    (tmp_path / "notes.txt").write_text("not a run's file")
    assert not run_started(tmp_path)
    (tmp_path / name).write_text("")
    assert run_started(tmp_path)
    with pytest.raises(ValueError, match="already holds a run"):
        check_run_folder(tmp_path, resume=False)


# -- checkpoints -----------------------------------------------------------------------------


def test_checkpoint_writes_are_atomic(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"model": "resnet20", "step": 1, "w": torch.ones(3)})
    save_checkpoint(path, {"model": "resnet20", "step": 2, "w": torch.ones(3)})
    assert load_checkpoint(path)["step"] == 2
    with pytest.raises(Exception, match="pickle|lambda|Can't"):
        save_checkpoint(path, {"model": "resnet20", "step": 3, "bad": lambda: None})
    assert load_checkpoint(path)["step"] == 2  # the old checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temp file


def test_checkpoint_errors_are_clear(tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"model": "resnet20", "step": 1, "w": torch.zeros(1000)})
    data = good.read_bytes()
    cases = {
        "missing.pt": (None, "no checkpoint at"),
        "random.pt": (random.Random(0).randbytes(300), "corrupt or truncated"),
        "truncated.pt": (data[: len(data) // 2], "corrupt or truncated"),
        "empty.pt": (b"", "corrupt or truncated"),
    }
    for name, (content, message) in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(tmp_path / name)
    torch.save({"fc.weight": torch.zeros(2)}, tmp_path / "state_dict.pt")
    with pytest.raises(CheckpointError, match="not a cnnlab checkpoint"):
        load_checkpoint(tmp_path / "state_dict.pt")
    torch.save(nn.Linear(2, 2), tmp_path / "module.pt")  # pickled code: never loaded
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(tmp_path / "module.pt")
    with pytest.raises(CheckpointError, match="checkpoint of resnet20, not resnet56"):
        load_checkpoint(good, model="resnet56")


# -- the command line ------------------------------------------------------------------------


def make_image_folder(root: Path, classes: int = 3, train: int = 8, test: int = 2) -> Path:
    """root/<split>/<class>/<i>.png, 32x32 RGB, each class its own colour plus noise."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, count in (("train", train), ("test", test)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                base = torch.tensor([80 * c, 255 - 80 * c, 128]).view(3, 1, 1)
                noise = torch.randint(0, 40, (3, 32, 32), generator=g)
                pixels = (base + noise).clamp(0, 255).to(torch.uint8)
                Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    return root


TRAIN_ARGS = ["--steps", "6", "--batch-size", "8", "--precision", "fp32", "--device", "cpu"]


def test_cli_train_eval_predict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    data, run = make_image_folder(tmp_path / "data"), tmp_path / "run"
    argv = ["train", "resnet20", "--data", str(data), "--out", str(run), "--recipe", "he2015"]
    assert main([*argv, *TRAIN_ARGS]) == 0
    out = capsys.readouterr().out
    assert "test error" in out
    assert {p.name for p in run.iterdir()} == {"config.json", "metrics.jsonl", "checkpoint.pt"}
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "resnet20" and config["recipe"]["steps"] == 6
    assert config["recipe"]["lr_milestones"] == [3, 4]  # 32k and 48k of 64k, scaled
    assert config["data"] == str(data) and config["split"] == "full"
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 6

    assert main(["eval", str(run / "checkpoint.pt"), "--data", str(data), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "top-1 error" in out and "top-5 error" in out and "6 images" in out
    assert main(["eval", str(run), "--data", str(data), "--device", "cpu", "--tta", "flip"]) == 0
    assert "test-time augmentation: flip" in capsys.readouterr().out

    photo = tmp_path / "photo.jpg"  # not 32x32: predict resizes it
    Image.new("RGB", (50, 40), (0, 255, 128)).save(photo)
    assert main(["predict", str(run), str(photo), "--top", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert str(photo) in out and out.count("class") == 2 and "%" in out


def test_cli_45k_split_selects_by_validation_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    data, run = make_image_folder(tmp_path / "data", train=10), tmp_path / "run"  # val: 1 a class
    argv = ["train", "resnet20", "--data", str(data), "--out", str(run), "--split", "45k"]
    assert main([*argv, *TRAIN_ARGS, "--eval-every", "3"]) == 0
    out = capsys.readouterr().out
    assert "best validation error" in out and "(best.pt)" in out
    assert load_checkpoint(run / "best.pt")["step"] in (3, 6)
    config = json.loads((run / "config.json").read_text())
    assert (config["split"], config["train_images"], config["val_images"]) == ("45k", 27, 3)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_error"] is not None for r in rows] == [True, True]


def test_cli_errors_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    data = make_image_folder(tmp_path / "data")

    def error(argv: list[str]) -> str:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("cnnlab: error:") and err.count("\n") == 1, err
        return err

    assert "corrupt or truncated" in error(["eval", str(tmp_path / "bad.pt"), "--data", str(data)])
    assert "bad.pt" in error(["predict", str(tmp_path / "bad.pt"), "x.png"])
    run = tmp_path / "r"
    options = ["--data", str(data), "--out", str(run), "--batch-size", "8", "--quiet"]
    argv = ["train", "resnet20", *options]
    assert "lr must be" in error([*argv, "--lr", "-1"])
    assert "steps must be" in error([*argv, "--steps", "0"])
    assert "KEY=VALUE" in error([*argv, "-O", "shortcut"])
    assert "nothing to resume" in error([*argv, "--resume"])
    assert "larger than the training set" in error([*argv, "--batch-size", "1000"])
    assert "resnet20" in error(["train", "resnet2", *options])  # unknown: the closest names
    assert not run.exists()  # nothing half-written


def test_cli_train_killed_with_sigkill_resumes_exactly(tmp_path: Path) -> None:
    # As a user would: `python -m cnnlab train ...`, killed mid-run, then the same command
    # with --resume; the final weights equal those of an uninterrupted run, bit for bit.
    data = make_image_folder(tmp_path / "data", classes=3, train=16)  # 48 images: 6 steps/epoch
    env = {**os.environ, "CNNLAB_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    args = ["--data", str(data), "--steps", "30", "--batch-size", "8", "--device", "cpu"]

    def command(run: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "cnnlab", "train", "resnet20", "--out", str(run), *args,
                *extra]  # fmt: skip

    straight = tmp_path / "straight"
    subprocess.run(command(straight), env=env, check=True, capture_output=True, timeout=300)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        command(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 240
    while not (killed / "checkpoint.pt").exists() and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert load_checkpoint(killed)["step"] < 30

    resumed = subprocess.run(
        command(killed, "--resume"), env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "test error" in resumed.stdout
    _assert_same_state(straight / "checkpoint.pt", killed / "checkpoint.pt")
    assert not [p for p in killed.iterdir() if p.name.startswith(".")]


def test_flip_test_time_augmentation_averages_each_image_with_its_mirror() -> None:
    from cnnlab.data import Normalize
    from cnnlab.train import evaluate

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)).eval()  # not mirror-symmetric
    data = make_data(32)
    normalize = Normalize(torch.zeros(3), torch.ones(3))
    x = normalize(data.images)
    with torch.no_grad():
        logits = (net(x) + net(x.flip(3))) / 2
    expected_loss = F.cross_entropy(logits, data.labels).item()
    expected_error = 100.0 * (logits.argmax(1) != data.labels).float().mean().item()

    flip = evaluate(net, data, normalize, device=torch.device("cpu"), tta="flip", batch_size=7)
    plain = evaluate(net, data, normalize, device=torch.device("cpu"))
    assert flip.loss == pytest.approx(expected_loss, rel=1e-5)
    assert flip.top1_error == pytest.approx(expected_error)
    assert plain.loss != pytest.approx(flip.loss, rel=1e-5)
    with pytest.raises(ValueError, match="--tta must be one of none, flip"):
        evaluate(net, data, normalize, device=torch.device("cpu"), tta="10crop")


def test_weight_average_follows_its_formula_and_is_what_is_saved(tmp_path: Path) -> None:
    from cnnlab.train.averaging import WeightAverage

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    average = WeightAverage(net, decay=0.9)
    before = {k: v.clone() for k, v in average.state_dict().items()}
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.add_(1.0)
    net[1].num_batches_tracked.fill_(7)
    average.update(net, step=100)  # d = min(0.9, 101 / 110) = 0.9
    for k, v in average.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, 0.9 * before[k] + 0.1 * net.state_dict()[k])
    assert int(average.net[1].num_batches_tracked) == 7
    assert average.factor(0) == pytest.approx(0.1)  # the first steps count less
    with pytest.raises(ValueError, match="ema must be in"):
        FAST.replace(ema=1.0)

    data = make_data(64, 32)
    result = train("resnet20", data, small(FAST.replace(ema=0.9)), out=tmp_path / "r",
                   test_data=make_data(16, 32, 2), device="cpu", progress=False)  # fmt: skip
    state = load_checkpoint(tmp_path / "r")
    saved, trained = state["model_state"], state["trained_state"]
    assert any(not torch.equal(saved[k], trained[k]) for k in saved)
    assert all(torch.equal(saved[k], v) for k, v in result.model.state_dict().items())


def test_lookahead_moves_the_slow_weights_every_k_steps_and_restarts_the_fast() -> None:
    from cnnlab.train.averaging import Lookahead

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    start = [p.detach().clone() for p in net.parameters()]
    lookahead = Lookahead(net, steps=2, alpha=0.25)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)  # an optimizer step
    lookahead.update(net, step=0)  # not the 2nd: the fast weights go on
    for p, p0 in zip(net.parameters(), start, strict=True):
        torch.testing.assert_close(p, p0 + 1.0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    lookahead.update(net, step=1)  # slow: p0 + 0.25 * ((p0 + 2) - p0); fast restarts there
    for p, slow, p0 in zip(net.parameters(), lookahead.slow, start, strict=True):
        torch.testing.assert_close(slow, p0 + 0.5)
        torch.testing.assert_close(p, p0 + 0.5)
    with pytest.raises(ValueError, match="lookahead_alpha in"):
        FAST.replace(lookahead_steps=5, lookahead_alpha=0.0)
    with pytest.raises(ValueError, match="lookahead_steps must be >= 0"):
        FAST.replace(lookahead_steps=-1)


def test_sam_applies_the_gradient_taken_up_the_loss_and_one_pass_of_statistics() -> None:
    from cnnlab.data import Normalize
    from cnnlab.train.hardware import Arithmetic
    from cnnlab.train.step import TrainStep

    torch.manual_seed(0)
    net = TinyNet(dropout=0.0)
    start = copy.deepcopy(net)
    rho, lr = 0.5, 0.1
    recipe = HE2015.replace(momentum=0.0, weight_decay=0.0, sam_rho=rho)
    normalize = Normalize(torch.full((3,), 0.5), torch.full((3,), 0.25))
    step = TrainStep(net, recipe, Arithmetic("fp32", False, "test"), normalize,
                     torch.device("cpu"))  # fmt: skip
    data = make_data(16)
    step(data.images, data.labels, lr)
    assert "SAM at rho 0.5" in step.describe()

    inputs = normalize(data.images)

    def gradient(network: nn.Module) -> list[Tensor]:
        network.zero_grad()
        F.cross_entropy(network(inputs), data.labels).backward()
        return [p.grad.clone() for p in network.parameters()]

    probe = copy.deepcopy(start)
    g = gradient(probe)  # at w; then at w + rho g / |g|, applied at w
    norm = torch.linalg.vector_norm(torch.stack([v.norm() for v in g]))
    with torch.no_grad():
        for p, v in zip(probe.parameters(), g, strict=True):
            p.add_(v * rho / norm)
    g_up = gradient(probe)
    for p, w, v, v0 in zip(net.parameters(), start.parameters(), g_up, g, strict=True):
        torch.testing.assert_close(p, w - lr * v)
        if p.ndim > 1:  # filters and the last layer's weights: not plain SGD's step
            assert not torch.allclose(p, w - lr * v0, rtol=1e-4, atol=1e-6)
    start(inputs)  # one pass of batch statistics, as the step's first
    torch.testing.assert_close(net.bn.running_mean, start.bn.running_mean)
    torch.testing.assert_close(net.bn.running_var, start.bn.running_var)
    assert int(net.bn.num_batches_tracked) == 1
