"""cnnlab export: ONNX and TorchScript files that compute what the PyTorch network computes.

The exported files are run here a second time, outside `export`'s own check, on another batch
size than the one traced (the batch axis is dynamic) and compared with the network rebuilt from
the checkpoint. Batch norms get random statistics first, so that folding them changes weights.
ONNX tests need the `export` extra (onnx, onnxscript, onnxruntime) and skip without it; `make
test` installs it.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import fx, nn

from cnnlab.cli import main
from cnnlab.export import (
    RELATIVE_TOLERANCE,
    ExportError,
    ExportPackageError,
    export,
    fold_batchnorm,
)
from cnnlab.models.registry import create_model
from cnnlab.train import load_model, save_checkpoint

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings(r"ignore:`torch\.jit\.load` is deprecated:FutureWarning"),
]

needs_onnx = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxscript", "onnxruntime")),
    reason="ONNX export needs the export extra: pip install -e '.[export]'",
)

CLASSES = tuple("abcdefghij")
MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]


def randomize_batchnorms(net: nn.Module, seed: int = 1) -> nn.Module:
    """Running statistics and affine parameters away from their initial 0, 1, 1, 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(0.5 * torch.randn(c, generator=g))
                m.running_var.copy_(0.1 + 2 * torch.rand(c, generator=g))
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.2 * torch.randn(c, generator=g))
    return net.eval()


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder whose checkpoint.pt holds a resnet20 as `cnnlab train` would write it."""
    torch.manual_seed(0)
    net = randomize_batchnorms(create_model("resnet20"))
    run = tmp_path_factory.mktemp("run")
    save_checkpoint(run / "checkpoint.pt", {
        "model": "resnet20", "model_options": {}, "num_classes": 10,
        "classes": list(CLASSES), "image_shape": [3, 32, 32], "mean": MEAN, "std": STD,
        "step": 7, "model_state": net.state_dict(),
    })  # fmt: skip
    return run


def run_exported(path: Path, images: torch.Tensor) -> torch.Tensor:
    """The exported file's logits, as a user would get them."""
    if path.suffix == ".onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
    with torch.no_grad():
        return torch.jit.load(str(path))(images)


def assert_close(logits: torch.Tensor, reference: torch.Tensor) -> None:
    """Within export's tolerance: 1e-4 of max(1, max|logit|)."""
    diff = float((logits - reference).abs().max())
    tolerance = RELATIVE_TOLERANCE * max(1.0, float(reference.abs().max()))
    assert diff <= tolerance, f"max |difference| {diff:.3g} > {tolerance:.3g}"


# -- folding --------------------------------------------------------------------------------


def foldable(graph_module: fx.GraphModule) -> list[str]:
    """Batch norms whose input is a conv used by nothing else: what folding should remove."""
    modules = dict(graph_module.named_modules())
    found = []
    for node in graph_module.graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], nn.BatchNorm2d):
            src = node.args[0]
            conv = modules.get(src.target) if src.op == "call_module" else None
            if isinstance(conv, nn.Conv2d) and len(src.users) == 1:
                found.append(node.target)
    return found


@pytest.mark.parametrize(
    ("model", "options", "size", "folded"),
    [
        ("resnet20", {}, 32, 19),  # stem + 2 per block x 9; option A has no projections
        ("resnet18", {}, 64, 20),  # stem + 2 x 8 + 3 projection shortcuts
        ("resnet50", {"layout": "torchvision"}, 64, 53),  # stem + 3 x 16 + 4 projections
        ("vgg11_bn", {"layout": "torchvision"}, 32, 8),
        ("googlenet", {"layout": "torchvision"}, 64, 57),  # forward: 3 stem + 9 x 6
        ("preact_resnet18", {}, 64, 9),  # stem + the middle BN of 8 blocks; the rest follow adds
    ],
)
def test_fold_batchnorm_folds_every_foldable_one_and_keeps_the_logits(
    model: str, options: dict[str, object], size: int, folded: int
) -> None:
    torch.manual_seed(0)
    net = randomize_batchnorms(create_model(model, **options))
    before = fx.symbolic_trace(net)
    runs = sum(isinstance(m, nn.BatchNorm2d) for m in before.modules())
    result = fold_batchnorm(net)
    assert not result.training
    left = [n for n, m in result.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert foldable(result) == []
    assert len(foldable(before)) == folded
    assert len(left) == runs - folded
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert_close(result(x), net(x))
    assert isinstance(net.get_submodule(foldable(before)[0]), nn.BatchNorm2d)  # net untouched


# -- export and check -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("format", "fold"), [pytest.param("onnx", True, marks=needs_onnx), ("torchscript", False)]
)
def test_cifar_checkpoint_exports_and_runs_as_the_network_does(
    run_folder: Path, tmp_path: Path, format: str, fold: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / f"resnet20.{format}"
    argv = ["export", str(run_folder), "--format", format, "--out", str(out)]
    assert main([*argv, "--fold-bn"] if fold else argv) == 0
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and f"wrote {out}" in line and "checked" in line
    assert ("19 batch norms folded" in line) == fold

    info = json.loads(out.with_name(out.name + ".json").read_text())
    assert info["model"] == "resnet20" and info["format"] == format
    assert info["input"]["shape"] == ["batch", 3, 32, 32]
    assert info["output"]["shape"] == ["batch", 10]
    assert info["normalization"]["mean"] == pytest.approx(MEAN)
    assert info["normalization"]["std"] == pytest.approx(STD)
    assert info["classes"] == list(CLASSES)
    assert 0 <= info["check"]["max_abs_diff"] <= info["check"]["tolerance"]
    assert info["versions"]["opset"] >= 18 if format == "onnx" else "opset" not in info["versions"]

    net, _ = load_model(run_folder, "cpu")
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert_close(run_exported(out, images), net(images))
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name, out.name + ".json"]


@pytest.mark.parametrize("format", [pytest.param("onnx", marks=needs_onnx), "torchscript"])
def test_imagenet_model_name_exports_with_random_weights(tmp_path: Path, format: str) -> None:
    out = tmp_path / "models" / f"resnet18.{format}"  # the folder is created
    result = export("resnet18", out, format=format, model_options={"layout": "torchvision"})
    assert result.input_shape == (3, 224, 224) and result.max_abs_diff <= result.tolerance
    info = json.loads(result.sidecar.read_text())
    assert info["model_options"] == {"layout": "torchvision"}
    assert info["normalization"].startswith("none: random weights (seed 0)")
    assert info["classes"] is None and info["output"]["shape"] == ["batch", 1000]

    torch.manual_seed(0)
    net = create_model("resnet18", layout="torchvision").eval()
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert_close(run_exported(out, images), net(images))


@needs_onnx
def test_mismatch_is_an_error_and_leaves_nothing(
    run_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cnnlab.export as module

    run_onnx = module._run_onnx

    def off_by_a_little(path: Path, images: torch.Tensor) -> torch.Tensor:
        logits = run_onnx(path, images)
        return logits + 1e-3 * logits.abs().max()  # ten times the tolerance

    monkeypatch.setattr(module, "_run_onnx", off_by_a_little)
    out = tmp_path / "out" / "resnet20.onnx"
    with pytest.raises(ExportError, match=r"differ from PyTorch's by up to .* tolerance"):
        export(run_folder, out, format="onnx")
    assert list(out.parent.iterdir()) == []  # no file, no sidecar, no temporary file


def test_missing_onnx_package_is_one_line_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ImportError
    out = tmp_path / "out" / "resnet20.onnx"
    missing = r"^ONNX export needs .*\(onnxruntime is not installed\): pip install 'cnnlab\[export"
    with pytest.raises(ExportPackageError, match=missing):
        export("resnet20", out, format="onnx")
    assert main(["export", "resnet20", "--format", "onnx", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'cnnlab[export]'" in err
    assert not out.parent.exists()


TS = ["--format", "torchscript"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["resnet20", "--format", "tflite"], "export format 'tflite' is not one of onnx, "),
        (["resnet21", *TS], "at 'resnet21', and unknown model 'resnet21'; did you mean"),
        (
            ["runs/r20/checkpoint.pt", *TS],
            "no checkpoint or run folder at runs/r20/checkpoint.pt\n",
        ),
        (["alexnet", *TS, "--input-size", "32"], "alexnet cannot take a 3x32x32 input"),
        (["resnet20", *TS, "-O", "shortcut=D"], "shortcut='D' is not valid"),
        (["resnet20", *TS, "--opset", "18"], "an opset applies to ONNX export"),
        pytest.param(
            ["resnet20", "--format", "onnx", "--opset", "13"],
            "opset 13 is outside",
            marks=needs_onnx,
        ),
    ],
)
def test_bad_input_is_one_clear_line_and_writes_nothing(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out" / "net.file"
    assert main(["export", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err + "\n" and "Traceback" not in err and err.count("\n") == 1
    assert not out.parent.exists()


def test_checkpoint_refuses_model_options(run_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="apply to a model name"):
        export(run_folder, tmp_path / "x.pt", format="torchscript", model_options={"width": 2})
