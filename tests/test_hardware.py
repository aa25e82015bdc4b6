"""Precision chosen by the hardware, runs sized in minutes, and the step unit, on any machine.

The capability check (`hardware.native_bf16`) and the clock of the run sizing
(`timing.clock`) are replaced here, so both answers are tested wherever the tests run.
"""

from __future__ import annotations

import itertools
import json
import warnings
from pathlib import Path

import pytest
import torch

from cnnlab import cli
from cnnlab.cli import main
from cnnlab.data import Normalize
from cnnlab.models.registry import create_model
from cnnlab.train import FAST, Recipe, hardware, timing, train
from cnnlab.train.hardware import EmulatedPrecisionWarning, choose_arithmetic
from cnnlab.train.muon import Muon
from cnnlab.train.step import TrainStep
from test_train import make_data, make_image_folder, small

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")


@pytest.fixture
def bf16_native(monkeypatch: pytest.MonkeyPatch) -> callable:
    """Set what the hardware is said to answer: bf16_native(True) or bf16_native(False)."""

    def fake(native: bool) -> None:
        monkeypatch.setattr(hardware, "native_bf16", lambda device: native)
        monkeypatch.setattr(hardware, "measure_bf16_slowdown", lambda device: 14.5)

    return fake


# -- precision and layout ----------------------------------------------------------------------


def test_auto_is_bf16_only_where_native(bf16_native: callable) -> None:
    bf16_native(True)
    chosen = choose_arithmetic(CPU)
    assert chosen.precision == "bf16" and "natively" in chosen.reason
    bf16_native(False)
    chosen = choose_arithmetic(CPU)
    assert chosen.precision == "fp32" and "no native bfloat16" in chosen.reason
    assert chosen.channels_last  # measured faster on both CPUs of issue 7
    assert not choose_arithmetic(CPU, "fp32", channels_last=False).channels_last


# torch.cpu.get_capabilities() of CPUs cnnlab has met (the keys that matter here).
ZEN3 = {"architecture": "x86_64", "avx512_f": False, "avx512_bf16": False, "amx_bf16": False}
ZEN5 = {"architecture": "x86_64", "avx512_f": True, "avx512_bf16": True, "amx_bf16": False}
XEON_AMX = {"architecture": "x86_64", "avx512_f": True, "avx512_bf16": True, "amx_bf16": True}
# Emerald Rapids under KVM with AVX512-BF16 and AMX hidden: oneDNN still says bf16.
XEON_HIDDEN = {"architecture": "x86_64", "avx512_f": True, "avx512_bf16": False, "amx_bf16": False}
ARM = {"architecture": "aarch64"}


@pytest.mark.parametrize(
    ("onednn", "features", "native"),
    [
        (False, ZEN3, False),
        (True, ZEN5, True),
        (True, XEON_AMX, True),
        (True, {"architecture": "x86_64", "amx_bf16": True}, True),
        (True, XEON_HIDDEN, False),  # AVX512 alone: emulated, 6.4x slower there
        (True, ARM, True),  # elsewhere oneDNN's answer stands
        (False, ARM, False),
    ],
)
def test_cpu_runs_bf16_needs_the_instructions_on_x86(
    onednn: bool, features: dict[str, object], native: bool
) -> None:
    assert hardware.cpu_runs_bf16(onednn, features) is native


def test_native_bf16_asks_onednn_and_the_instructions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: XEON_HIDDEN)
    assert not hardware.native_bf16(CPU)
    assert choose_arithmetic(CPU).precision == "fp32"
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: ZEN5)
    assert hardware.native_bf16(CPU)
    assert choose_arithmetic(CPU).precision == "bf16"


def test_explicit_bf16_where_emulated_runs_with_a_warning(bf16_native: callable) -> None:
    bf16_native(False)
    with pytest.warns(EmulatedPrecisionWarning, match=r"emulated .* 14\.5x its float32 time"):
        chosen = choose_arithmetic(CPU, "bf16")
    assert chosen.precision == "bf16" and "emulated" in chosen.reason
    bf16_native(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # native: no warning
        assert choose_arithmetic(CPU, "bf16").precision == "bf16"


def test_measured_slowdown_is_a_positive_ratio() -> None:
    ratio = hardware.measure_bf16_slowdown(CPU, repeats=1)
    assert ratio > 0 and ratio == ratio  # finite, not NaN


def test_bad_precision_and_devices_are_refused() -> None:
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16"):
        choose_arithmetic(CPU, "fp16")
    with pytest.raises(ValueError, match="CPU or a CUDA GPU, not on 'meta'"):
        choose_arithmetic(torch.device("meta"))
    if torch.cuda.device_count() < 8:
        with pytest.raises(ValueError, match="names GPU 7"):
            hardware.check_device(torch.device("cuda", 7))


@pytest.mark.parametrize("native", [True, False])
def test_train_records_the_choice(bf16_native: callable, native: bool, tmp_path: Path) -> None:
    bf16_native(native)
    out = tmp_path / "run"
    train("resnet20", make_data(32, size=32), small(FAST, 2), out=out, device="cpu",
          progress=False)  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    assert config["recipe"]["precision"] == "auto"
    assert config["arithmetic"]["precision"] == ("bf16" if native else "fp32")
    assert config["machine"]["native_bf16"] == native
    assert config["machine"]["cpu_capability"] == hardware.cpu_capability()


def test_resume_keeps_the_arithmetic_it_started_with(bf16_native: callable, tmp_path) -> None:
    bf16_native(False)
    out, data = tmp_path / "run", make_data(32, size=32)
    recipe = small(FAST, 8)  # 4 steps an epoch: a checkpoint at step 4
    train("resnet20", data, recipe, out=out, device="cpu", stop_after=5, progress=False)
    bf16_native(True)  # resumed on a machine with native bf16: the run stays in float32
    train("resnet20", data, recipe, out=out, device="cpu", resume=True, progress=False)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["arithmetic"]["precision"] == "fp32" and state["step"] == 8


def test_cli_prints_the_choice_and_a_one_line_warning(
    bf16_native: callable, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    bf16_native(False)
    data = make_image_folder(tmp_path / "data")
    argv = ["train", "resnet20", "--data", str(data), "--steps", "2", "--batch-size", "8",
            "--device", "cpu"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert "precision auto -> fp32" in capsys.readouterr().out
    with pytest.warns(EmulatedPrecisionWarning, match="14.5x") as caught:
        assert main([*argv, "--out", str(tmp_path / "b"), "--precision", "bf16"]) == 0
    # What a terminal shows of it: one line, like the errors (no file:line, no source line).
    shown = cli._format_warning(caught[0].message, EmulatedPrecisionWarning, "f.py", 1)
    assert (
        shown.startswith("cnnlab: warning: --precision bf16 is emulated") and shown.count("\n") == 1
    )


# -- runs sized in minutes ---------------------------------------------------------------------


def test_eval_interval_is_at_most_once_an_epoch() -> None:
    assert timing.eval_interval(100, steps_per_epoch=195) == 195  # only the final evaluation
    assert timing.evaluations(100, 195) == 1
    assert timing.eval_interval(5850, steps_per_epoch=195) == 585  # 10 a run
    assert timing.evaluations(5850, 585) == 10


def test_steps_for_time_fits_training_and_evaluations() -> None:
    steps = timing.steps_for_time(180, step_s=0.5, eval_s=10, steps_per_epoch=100)
    cost = steps * 0.5 + timing.evaluations(steps, timing.eval_interval(steps, 100)) * 10
    assert cost <= 180
    more = steps + 1
    assert more * 0.5 + timing.evaluations(more, timing.eval_interval(more, 100)) * 10 > 180
    assert timing.steps_for_time(1, step_s=10, eval_s=0, steps_per_epoch=5) == 1  # at least one
    with pytest.raises(ValueError):
        timing.steps_for_time(0, step_s=1, eval_s=0, steps_per_epoch=5)


def test_measure_times_steps_after_the_warmup(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = itertools.count(step=0.5)
    monkeypatch.setattr(timing, "clock", lambda: next(ticks))
    calls = []
    seconds = timing.measure(calls.append, sync=lambda _: None)
    # 0.5 s a clock reading, read after each timed step from the third: 2 s after 6 steps.
    assert calls == list(range(timing.WARMUP + 6))
    assert seconds == pytest.approx(2.5 / 6)  # the last reading, after the sync


def test_time_budget_sizes_records_and_resumes(monkeypatch, tmp_path: Path) -> None:
    ticks = itertools.count(step=0.5)  # every clock reading 0.5 s later: a fake, slow machine
    monkeypatch.setattr(timing, "clock", lambda: next(ticks))
    data, out = make_data(64, size=32), tmp_path / "run"
    recipe = small(FAST, 1000)
    train("resnet20", data, recipe, out=out, test_data=make_data(16, size=32), device="cpu",
          time_minutes=0.1, stop_after=3, progress=False)  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    sizing = config["time_budget"]
    assert sizing["minutes"] == 0.1 and sizing["step_s"] == pytest.approx(2.5 / 6)
    assert sizing["eval_image_s"] == pytest.approx(0.5 / 16)  # one reading for 16 images
    # 6 s: 12 steps of 5/12 s and two evaluations (at 8 and 12) of 0.5 s
    steps = sizing["steps"]
    assert config["recipe"]["steps"] == steps and 11 <= steps <= 12
    result = train("resnet20", data, recipe, out=out, test_data=make_data(16, size=32),
                   device="cpu", time_minutes=0.1, resume=True, progress=False)  # fmt: skip
    assert result.completed and result.steps == steps  # not sized again


def test_time_and_bad_devices_are_one_line_errors(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    data, run = make_image_folder(tmp_path / "data"), tmp_path / "r"
    argv = ["train", "resnet20", "--data", str(data), "--out", str(run), "--quiet"]
    for extra, expected in (
        (["--time", "0"], "--time must be a positive number of minutes"),
        (["--time", "-2"], "--time must be a positive number of minutes"),
        (["--time", "1", "--budget", "0.5"], "drop --budget"),
        (["--device", "meta"], "CPU or a CUDA GPU"),
    ):
        assert main([*argv, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("cnnlab: error:") and err.count("\n") == 1 and expected in err
    assert not run.exists()


def test_default_evaluation_is_at_most_once_an_epoch(tmp_path: Path) -> None:
    data = make_data(64, size=32)  # 8 steps an epoch of 8 images
    result = train("resnet20", data, small(FAST, 20), test_data=make_data(16, size=32),
                   device="cpu", log_every=1, progress=False)  # fmt: skip
    evaluated = [r["step"] for r in result.metrics if r["test_error"] is not None]
    assert evaluated == [8, 16, 20]


# -- the step unit (its CUDA graph is tested in test_gpu.py) -----------------------------------


def _cpu_step(recipe: Recipe = FAST) -> TrainStep:
    torch.manual_seed(0)
    net = create_model("resnet20")
    normalize = Normalize(torch.full((3,), 0.5), torch.full((3,), 0.25))
    return TrainStep(net, recipe, choose_arithmetic(CPU, "fp32"), normalize, CPU)


@pytest.mark.parametrize("optimizer", ["auto", "sgd"])
def test_step_returns_device_tensors_and_reads_its_learning_rate(optimizer: str) -> None:
    step = _cpu_step(FAST.replace(optimizer=optimizer))
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(8) % 10
    loss, wrong = step(x, y, 0.1)
    assert loss.shape == () and loss.dtype == torch.float32 and wrong.dtype == torch.int64
    assert all(group["lr"] is step.lr for group in step.optimizer.param_groups)

    def weights() -> list[torch.Tensor]:
        # Muon rescales each filter bank to its fixed norm at every step, even at lr 0: what
        # the learning rate moves is the bank's direction.
        return [p.detach() / p.norm() if p.ndim == 4 else p.detach().clone()
                for p in step.net.parameters()]  # fmt: skip

    before = weights()
    step(x, y, 0.0)  # the learning rate is read from the tensor at each step
    for a, b in zip(before, weights(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert float(step.lr) == 0.0
    step(x, y, 0.1)
    assert not all(torch.allclose(a, b) for a, b in zip(before, weights(), strict=True))


@pytest.mark.parametrize("optimizer", ["auto", "sgd"])
def test_loaded_optimizer_state_keeps_the_steps_learning_rate(optimizer: str) -> None:
    recipe = FAST.replace(optimizer=optimizer)
    a, b = _cpu_step(recipe), _cpu_step(recipe)
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    a(x, torch.arange(8), 0.1)
    b.load_optimizer_state(a.optimizer.state_dict())
    assert all(group["lr"] is b.lr for group in b.optimizer.param_groups)
    for p, q in zip(a.net.parameters(), b.net.parameters(), strict=True):
        moved = a.optimizer.state[p]["momentum_buffer"]
        torch.testing.assert_close(b.optimizer.state[q]["momentum_buffer"], moved)
    if optimizer == "sgd":
        assert all(group["fused"] for group in b.optimizer.param_groups)
    else:
        assert isinstance(b.optimizer, Muon) and b.optimizer.param_groups[0]["orthogonal"]


def test_recipe_options_from_the_command_line(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    data, run = make_image_folder(tmp_path / "data"), tmp_path / "run"
    argv = ["train", "resnet20", "--data", str(data), "--steps", "2", "--batch-size", "8",
            "--device", "cpu", "--quiet", "--out", str(run)]  # fmt: skip
    assert main([*argv, "-R", "flip=alternate", "-R", "cutout=8", "-R", "label_smoothing=0"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["recipe"]["flip"] == "alternate" and config["recipe"]["cutout"] == 8
    assert config["recipe"]["label_smoothing"] == 0
    assert config["recipe_options"] == {"flip": "alternate", "cutout": 8, "label_smoothing": 0}
    for bad, expected in (
        ("mixup=0.2", "'mixup' is not a recipe field; the fields: batch_size"),
        ("flip=sometimes", "flip"),
        ("cutout", "recipe option 'cutout' is not KEY=VALUE"),
    ):
        assert main([*argv[:-1], str(tmp_path / "other"), "-R", bad]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "other").exists()


def test_runs_at_once_share_the_cpu_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert hardware.threads_per_run(2, cores=2) == 1
    assert hardware.threads_per_run(3, cores=16) == 5
    assert hardware.threads_per_run(4, cores=2) == 1  # never fewer than one
    assert hardware.threads_per_run(1, cores=2) is None  # one run: torch's own default
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert hardware.threads_per_run(2, cores=16) is None  # the user's choice stands
