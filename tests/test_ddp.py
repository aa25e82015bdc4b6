"""Two training processes on the CPU (gloo), as `torchrun --nproc_per_node=2` runs them.

Without BatchNorm, two processes with 8 images each compute the same steps as one process
with the global batch of 16, up to the order of float sums. With BatchNorm each process
normalises by its own 8 images (plain per-process BN, as the paper's multi-GPU training),
so only the agreement between the processes is checked.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlab.data import ArrayDataset
from cnnlab.models import registry
from cnnlab.train import FAST, Recipe, train

WORLD_SIZE = 2


class DdpNet(nn.Module):
    """Two convs and a linear layer, with or without BatchNorm."""

    def __init__(self, num_classes: int = 10, bn: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8) if bn else nn.Identity()
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.conv2(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def register() -> None:
    registry._ensure_loaded()
    registry._BUILDERS["ddpnet"] = DdpNet
    registry._CARDS["ddpnet"] = registry.ModelCard(
        name="ddpnet", family="test", paper="-", input_size=8, num_classes=10, params=0, macs=0
    )


def unregister() -> None:
    registry._BUILDERS.pop("ddpnet", None)
    registry._CARDS.pop("ddpnet", None)


def make_data(n: int, seed: int) -> ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
    return ArrayDataset(images, torch.randint(0, 10, (n,), generator=g), tuple("abcdefghij"))


RECIPE: Recipe = FAST.replace(batch_size=16, precision="fp32").with_steps(8)


def run(folder: Path, bn: bool) -> nn.Module:
    """The same call in every process; `train` finds its rank in the environment."""
    return train(
        "ddpnet", make_data(64, 0), RECIPE, out=folder, val_data=make_data(12, 1),
        test_data=make_data(10, 2), model_options={"bn": bn}, device="cpu", eval_every=4,
        log_every=2, progress=False, seed=5,
    ).model  # fmt: skip


def worker(rank: int, port: int, tmp: Path) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
        WORLD_SIZE=str(WORLD_SIZE), LOCAL_RANK=str(rank),
    )  # fmt: skip
    torch.set_num_threads(1)
    register()
    # One process group for both runs (train() then leaves it alone), so no port is reused.
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        for bn in (False, True):
            model = run(tmp / f"ddp-bn{bn}", bn)
            torch.save(model.state_dict(), tmp / f"bn{bn}-rank{rank}.pt")
        # Sized by time: each process times its own copy of the step (no DDP there, so they
        # may time different numbers of steps), then all train process 0's number of steps.
        timed = train("ddpnet", make_data(64, 0), RECIPE, out=tmp / "ddp-timed",
                      test_data=make_data(10, 2), device="cpu", time_minutes=0.05,
                      progress=False, seed=5)  # fmt: skip
        (tmp / f"timed-rank{rank}.txt").write_text(str(timed.steps))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path: Path) -> None:
    mp.spawn(worker, args=(free_port(), tmp_path), nprocs=WORLD_SIZE, join=True)

    for bn in (False, True):
        ranks = [torch.load(tmp_path / f"bn{bn}-rank{r}.pt") for r in range(WORLD_SIZE)]
        for key in ranks[0]:  # DDP keeps the processes in lockstep, bit for bit
            assert torch.equal(ranks[0][key], ranks[1][key]), (bn, key)
        saved = torch.load(tmp_path / f"ddp-bn{bn}" / "checkpoint.pt")["model_state"]
        assert all(torch.equal(saved[k], ranks[0][k]) for k in saved)
    steps = {(tmp_path / f"timed-rank{r}.txt").read_text() for r in range(WORLD_SIZE)}
    config = json.loads((tmp_path / "ddp-timed" / "config.json").read_text())
    assert steps == {str(config["time_budget"]["steps"])}  # one length for both processes

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    register()
    try:
        single = run(tmp_path / "single", bn=False).state_dict()
    finally:
        unregister()
        torch.set_num_threads(threads)
    ddp = torch.load(tmp_path / "bnFalse-rank0.pt")
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-4, atol=1e-5)

    # Process 0 alone wrote the run folder: one metrics line per log point, not two.
    rows = [json.loads(x) for x in (tmp_path / "ddp-bnFalse" / "metrics.jsonl").open()]
    single_rows = [json.loads(x) for x in (tmp_path / "single" / "metrics.jsonl").open()]
    assert [r["step"] for r in rows] == [r["step"] for r in single_rows] == [2, 4, 6, 8]
    for a, b in zip(rows, single_rows, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    config = json.loads((tmp_path / "ddp-bnFalse" / "config.json").read_text())
    assert config["processes"] == WORLD_SIZE


def test_torchrun_command_line(tmp_path: Path) -> None:
    # As a user would: torchrun starts two processes of `python -m cnnlab train`.
    from PIL import Image

    for split, count in (("train", 8), ("test", 2)):
        for c in range(2):
            folder = tmp_path / "data" / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (32, 32), (200 * c, 40 * i, 90 + 9 * i)).save(folder / f"{i}.png")
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "CNNLAB_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    command = [
        str(torchrun), "--nproc_per_node=2", "--master_port", str(free_port()), "-m", "cnnlab",
        "train", "resnet20", "--data", str(tmp_path / "data"), "--out", str(out), "--steps", "4",
        "--batch-size", "8", "--device", "cpu", "--precision", "fp32", "--eval-every", "2",
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("test error") == 1 + 2  # the final line, and 2 evaluations
    assert {p.name for p in out.iterdir()} == {"config.json", "metrics.jsonl", "checkpoint.pt"}
    assert json.loads((out / "config.json").read_text())["processes"] == 2
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").open()] == [2, 4]


def test_torchrun_streams_an_image_folder(tmp_path: Path) -> None:
    # The ImageNet path under torchrun: each process reads and crops its share of every batch.
    from test_stream import make_folder

    data = make_folder(tmp_path / "data", per_class=4, val=2)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    command = [
        str(torchrun), "--nproc_per_node=2", "--master_port", str(free_port()), "-m", "cnnlab",
        "train", "resnet20", "--data", str(data), "--out", str(out), "--steps", "2",
        "--recipe", "resnet2015", "--data-mode", "stream", "--workers", "1", "--device", "cpu",
        "-R", "batch_size=6", "-R", "scale_range=36,40", "-R", "test_resize=36", "-q",
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["processes"] == 2 and config["data_mode"]["mode"] == "stream"
    rows = [json.loads(x) for x in (out / "metrics.jsonl").open()]
    assert rows[-1]["step"] == 2 and rows[-1]["val_error"] is not None
