"""The throughput benchmark's helpers: FLOPs per training image, the matmul peak, the targets;
the Muon benchmark's comparison.

benchmarks/ is not a package, so the script is loaded from its path. Nothing here times
anything that a test asserts on.
"""

from __future__ import annotations

import math
from types import ModuleType

import pytest
import torch

import cnnlab
from cnnlab.train import timing
from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_benchmark("train_throughput")


def test_training_flops_are_six_times_the_measured_macs(bench: ModuleType) -> None:
    flops = bench.training_flops_per_image("resnet20")
    assert flops == 6 * cnnlab.profile("resnet20").macs
    # He et al. 2015's resnet20: about 40.55M multiply-adds, so 243 MFLOP a training image.
    assert flops == pytest.approx(243.3e6, rel=1e-3)


def test_training_flops_follow_the_number_of_classes(bench: ModuleType) -> None:
    # The last layer is 64 x classes: 90 more classes are 64 x 90 more multiply-adds.
    extra = bench.training_flops_per_image("resnet20", 100) - bench.training_flops_per_image(
        "resnet20", 10
    )
    assert extra == 6 * 64 * 90


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_matmul_peak_is_a_positive_finite_rate(
    bench: ModuleType, precision: str, one_thread: None
) -> None:
    peak = bench.matmul_peak(torch.device("cpu"), precision, n=32, repeats=2, warmup=1)
    assert peak > 0 and math.isfinite(peak)


def test_fraction_of_peak(bench: ModuleType) -> None:
    # 1,000 images/s of 243 MFLOP each against a 486 GFLOP/s peak: half of it.
    assert bench.fraction_of_peak(1_000, 243e6, 486) == pytest.approx(0.5)


def test_steady_rate_from_metrics_rows(bench: ModuleType) -> None:
    rows = [{"step": 6, "train_s": 1.0}, {"step": 12, "train_s": 1.5}, {"step": 60, "train_s": 5}]
    assert bench.steady_rate(rows, batch_size=128) == pytest.approx(54 * 128 / 4)
    assert bench.steady_rate(rows[:1], batch_size=128) is None


def _results(
    images: float, ratio: float, fraction: float, steady: float | None = None
) -> dict[str, object]:
    side = "cnnlab"
    return {
        "images_per_s": {side: images},
        "steady_images_per_s": {side: steady},
        "ratio_to_reference": {side: ratio},
        "fraction_of_peak": {side: fraction},
    }


def test_cpu_targets(bench: ModuleType) -> None:
    checks = bench.check_targets("cpu", 128, {"resnet20": _results(1_400, 2.2, 0.55)})
    assert [c["passed"] for c in checks] == [True, False]
    assert "x2.20" in checks[0]["text"] and "55%" in checks[1]["text"]


def test_cpu_targets_need_resnet20_at_batch_128(bench: ModuleType) -> None:
    for batch, models in ((256, {"resnet20": _results(1, 9, 1)}), (128, {"resnet56": {}})):
        checks = bench.check_targets("cpu", batch, models)
        assert [c["passed"] for c in checks] == [None]


def test_cuda_targets_judge_the_steady_rate(bench: ModuleType) -> None:
    models = {"resnet20": _results(20_000, 9, 0.1, steady=85_000)}
    checks = bench.check_targets("cuda", 256, models)
    assert [c["passed"] for c in checks] == [True, None]  # resnet56 was not run
    models["resnet56"] = _results(20_000, 9, 0.1, steady=29_000)
    assert [c["passed"] for c in bench.check_targets("cuda", 256, models)] == [True, False]
    models["resnet56"] = _results(40_000, 9, 0.1, steady=None)  # too few steps for one
    assert [c["passed"] for c in bench.check_targets("cuda", 256, models)] == [True, None]


def test_muon_benchmark_compares_the_same_result_both_ways(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    muon = load_benchmark("muon_step")
    monkeypatch.setattr(timing, "MIN_TIMED_S", 0.0)  # the fewest timed calls: nothing is judged
    r = muon.measure("resnet20", torch.device("cpu"), rounds=1)
    assert (r["banks"], r["shapes"]) == (19, 6)  # He et al.'s resnet20: 19 convolutions
    assert r["difference"] < 1e-5  # the stacked iteration is the same arithmetic
    assert all(r[k] > 0 for k in ("one_by_one_ms", "stacked_ms", "muon_step_ms", "sgd_step_ms"))
