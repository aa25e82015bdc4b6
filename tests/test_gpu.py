"""The CUDA-graph training step, on a GPU (`make test-gpu`); skipped where there is no CUDA.

The graph replays forward, loss, backward and the fused optimizer update captured once, reading
its batch from static tensors and its learning rate from a device tensor: these tests hold it
to the eager step it replaces, and check that it follows the learning rate it is given.
"""

from __future__ import annotations

import json

import pytest
import torch

from cnnlab.data import ArrayDataset, Normalize
from cnnlab.models.registry import create_model
from cnnlab.train import FAST, train
from cnnlab.train.hardware import choose_arithmetic
from cnnlab.train.step import WARMUP_STEPS, TrainStep

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

CUDA = torch.device("cuda")


def _batches(n: int, batch: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        (
            torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, generator=g).to(CUDA),
            torch.randint(0, 10, (batch,), generator=g).to(CUDA),
        )
        for _ in range(n)
    ]


def _step(cuda_graph: bool, precision: str = "fp32", sam_rho: float = 0.0) -> TrainStep:
    torch.manual_seed(0)
    net = create_model("resnet20").to(CUDA, memory_format=torch.channels_last)
    recipe = FAST.replace(precision=precision, sam_rho=sam_rho)
    arithmetic = choose_arithmetic(CUDA, precision)
    normalize = Normalize(torch.full((3,), 0.5), torch.full((3,), 0.25)).to(CUDA)
    return TrainStep(net, recipe, arithmetic, normalize, CUDA, cuda_graph=cuda_graph)


@pytest.mark.parametrize(("precision", "sam_rho"), [("fp32", 0.0), ("bf16", 0.0), ("fp32", 0.05)])
def test_graph_step_trains_like_the_eager_step(precision: str, sam_rho: float) -> None:
    torch.backends.cudnn.deterministic = True
    try:
        graphed, eager = _step(True, precision, sam_rho), _step(False, precision, sam_rho)
        lrs = [0.05, 0.1, 0.02, 0.08, 0.0, 0.1, 0.03, 0.06]
        losses = {}
        for name, step in (("graph", graphed), ("eager", eager)):
            losses[name] = [
                float(step(x, y, lr)[0]) for (x, y), lr in zip(_batches(8), lrs, strict=True)
            ]
        assert graphed._graph is not None, "the step was never captured"
        tol = 1e-4 if precision == "fp32" else 2e-2
        assert losses["graph"] == pytest.approx(losses["eager"], rel=tol, abs=tol)
        for p, q in zip(graphed.net.parameters(), eager.net.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=tol * 10, atol=tol * 10)
    finally:
        torch.backends.cudnn.deterministic = False


def test_captured_step_follows_the_learning_rate() -> None:
    step = _step(True)
    batches = _batches(WARMUP_STEPS + 3)
    for x, y in batches[: WARMUP_STEPS + 1]:  # the last of these captures and replays
        step(x, y, 0.1)
    assert step._graph is not None
    weights = [p.detach().clone() for p in step.net.parameters()]
    x, y = batches[-2]
    step(x, y, 0.0)  # a replay at lr 0 leaves the weights as they were ...
    for before, p in zip(weights, step.net.parameters(), strict=True):
        assert torch.equal(before, p)
    step(*batches[-1], 0.1)  # ... and one at lr 0.1 moves them
    assert any(not torch.equal(b, p) for b, p in zip(weights, step.net.parameters(), strict=True))


def test_cuda_run_records_its_arithmetic_and_resumes(tmp_path) -> None:
    g = torch.Generator().manual_seed(1)
    data = ArrayDataset(
        torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8, generator=g),
        torch.arange(256) % 10,
        tuple(f"c{i}" for i in range(10)),
    )
    recipe = FAST.replace(batch_size=32).with_steps(16)
    out = tmp_path / "run"
    train("resnet20", data, recipe, out=out, test_data=data, device="cuda", stop_after=10,
          progress=False)  # fmt: skip
    result = train("resnet20", data, recipe, out=out, test_data=data, device="cuda",
                   resume=True, progress=False)  # fmt: skip
    assert result.completed and result.steps == 16
    config = json.loads((out / "config.json").read_text())
    assert config["arithmetic"]["precision"] == "bf16"  # an H100 runs bfloat16 natively
    assert "CUDA graph" in config["step"]
    assert 0 <= result.test_error <= 100
