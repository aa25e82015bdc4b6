"""Export a network for inference outside cnnlab: ONNX (run by onnxruntime) or TorchScript.

What is exported is the network in eval mode (dropout off, batch norm with its running
statistics), optionally with every batch norm that directly follows a convolution folded into
that convolution's weight and bias (`fold_bn=True`). It takes what the PyTorch network takes: a
float32 N x C x H x W batch of normalised images, (pixel / 255 - mean) / std per channel, and
returns N x classes logits. The batch axis is dynamic. A sidecar `FILE.json` next to the file
says what to feed it: model and options, input shape, the normalisation of the training split
(from the checkpoint; none for a model built with random weights), class names, versions.

Every export is checked before it is kept: the written file is run by the runtime a user would
run it with (onnxruntime on the CPU; `torch.jit.load`) on a fixed batch of random inputs, and
its logits are compared with those of the original PyTorch network, unfolded. The file is
written to a temporary name in the destination folder and renamed into place only when the
check passes (`cnnlab.train.checkpoint.atomic_write`), so a mismatch, a failure or an
interruption leaves nothing at `out`.

The check's tolerance is max|difference| <= 1e-4 * max(1, max|logit|). Both sides compute in
float32 (machine epsilon 1.2e-7) but sum in other orders with other kernels (onnxruntime's
convolutions are not PyTorch's; folding multiplies weights by the batch norm's scale before the
sum rather than after), which moves the logits by 1e-7 to 3e-6 of their largest value
(measured on resnet20, resnet110, resnet164, resnet18 and resnet50 in both layouts,
preact_resnet18, vgg11_bn, googlenet and alexnet: folded with randomised batch-norm statistics,
and exported).
An export that is wrong (a layer dropped, a constant changed, weights not loaded) moves them
by about their own scale. 1e-4 sits over an order above the first and three below the second.
The floor of 1 keeps the bound meaningful for untrained networks, whose logits can be far
below 1 (googlenet's are about 0.03 at initialisation).

ONNX export uses `torch.onnx.export(dynamo=True)`, the torch.export-based exporter (default
since torch 2.9): the TorchScript-based one (`dynamo=False`) is deprecated and cannot export
AlexNet with a dynamic batch axis (its 6x6 adaptive average pool needs static sizes there;
ZFNet's and VGG's are alike). It needs the packages of the `export` extra (onnx, onnxscript,
onnxruntime): pip install 'cnnlab[export]'.
TorchScript export is `torch.jit.trace`; torch deprecates TorchScript (2.14 warns on every
call, silenced here), so prefer ONNX where the consumer can read it.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import json
import platform
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor, fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from cnnlab.models import pretrained
from cnnlab.models.registry import UnknownModelError, create_model, model_card
from cnnlab.train.checkpoint import atomic_write
from cnnlab.train.evaluate import load_model

__all__ = [
    "CHECK_IMAGES",
    "FORMATS",
    "MIN_OPSET",
    "RELATIVE_TOLERANCE",
    "ExportError",
    "ExportPackageError",
    "ExportResult",
    "Network",
    "export",
    "fold_batchnorm",
    "resolve_network",
]

FORMATS = ("onnx", "torchscript")
RELATIVE_TOLERANCE = 1e-4  # of max(1, max|logit|); see the module docstring
CHECK_IMAGES = 3  # the check's batch; the export traces 2, so the dynamic batch axis is tested
EXPORT_IMAGES = 2
# torch.onnx's dynamo exporter implements operators from opset 18 on; asked for less, it exports
# 18 and tries onnx's version converter, which has no adapter down for Pad (torch 2.14).
MIN_OPSET = 18
SEED = 0  # of the random weights of a model name and of the check's inputs

# What each format needs beyond torch, import name -> what pip installs.
_PACKAGES = {"onnx": ("onnx", "onnxscript", "onnxruntime"), "torchscript": ()}
_FORMAT_NAMES = {"onnx": "ONNX", "torchscript": "TorchScript"}


class ExportError(RuntimeError):
    """The exporter failed, or the exported file does not compute what the network computes."""


class ExportPackageError(ImportError):
    """A package the chosen format needs is not installed; the message says what to install."""


@dataclass(frozen=True)
class Network:
    """A network to export (eval mode, on the CPU) and what is known of its training."""

    model: nn.Module
    name: str  # the registered name
    options: dict[str, object]  # the builder's options, num_classes included where known
    source: str  # where it came from, for people: "checkpoint runs/r20 (step 800)"
    image_shape: tuple[int, int, int] | None  # C x H x W it was trained on; None: untrained
    classes: tuple[str, ...] | None
    mean: list[Any] | None  # 0..1 units, per channel (C,) or per pixel (C x H x W)
    std: list[float] | None  # per channel (C,)


@dataclass(frozen=True)
class ExportResult:
    """What `export` wrote and how the check went."""

    path: Path
    sidecar: Path  # FILE.json
    format: str
    input_shape: tuple[int, int, int]  # C x H x W; the batch axis is dynamic
    max_abs_diff: float  # exported file against the unfolded PyTorch network
    tolerance: float
    batchnorms_folded: int
    batchnorms_left: tuple[str, ...]  # those `fold_batchnorm` could not fold (not after a conv)

    def summary(self) -> str:
        """One line for the command line."""
        folded = ""
        if self.batchnorms_folded or self.batchnorms_left:
            folded = f", {self.batchnorms_folded} batch norms folded"
            if self.batchnorms_left:
                folded += f", {len(self.batchnorms_left)} left (not after a conv)"
        c, h, w = self.input_shape
        return (
            f"wrote {self.path} ({self.format}, input N x {c} x {h} x {w}{folded}) and "
            f"{self.sidecar.name}; checked: max |logit difference| {self.max_abs_diff:.2e} "
            f"<= tolerance {self.tolerance:.2e}"
        )


def resolve_network(
    source: str | Path,
    model_options: dict[str, object] | None = None,
    weights: str | None = None,
) -> Network:
    """The network named by `source`: a checkpoint, a run folder or a registered model name.

    Args:
        source: a checkpoint file or a run folder (its checkpoint.pt) written by `cnnlab
            train`; otherwise a registered model name, built with random weights (seed 0), or
            with torchvision's published `weights`.
        model_options: builder options for a model name, e.g. {"layout": "torchvision"}; a
            checkpoint's options are those it was trained with.
        weights: a weights name torchvision publishes for the model ("IMAGENET1K_V1",
            "DEFAULT"); the network then takes their input size and normalisation.

    Raises:
        CheckpointError: the checkpoint cannot be used (see `load_checkpoint`).
        ValueError: neither an existing path nor a registered name, or options given with a
            checkpoint, or options the builder does not take.
    """
    spec = str(source)
    options = dict(model_options or {})
    if weights is not None and Path(spec).exists():
        raise ValueError(
            f"--weights loads torchvision's weights into a model name; {spec} is a checkpoint"
        )
    if Path(spec).exists():
        if options:
            raise ValueError(
                f"model options ({', '.join(options)}) apply to a model name; the checkpoint "
                f"{spec} is rebuilt with the options it was trained with"
            )
        net, state = load_model(spec, "cpu")
        shape = tuple(int(v) for v in state["image_shape"])
        return Network(
            model=net.eval(),
            name=str(state["model"]),
            options={**dict(state["model_options"]), "num_classes": int(state["num_classes"])},
            source=f"checkpoint {spec} (step {state.get('step', '?')})",
            image_shape=(shape[0], shape[1], shape[2]),
            classes=tuple(state["classes"]),
            mean=_plain(state["mean"]),
            std=None if state.get("std") is None else [float(v) for v in state["std"]],
        )
    if "/" in spec or "\\" in spec or Path(spec).suffix:  # a path, not a name
        raise ValueError(f"no checkpoint or run folder at {spec}")
    try:
        model_card(spec)
    except UnknownModelError as e:
        raise ValueError(f"no checkpoint or run folder at {spec!r}, and {e}") from None
    if weights is not None:
        net, meta = pretrained.load(spec, weights, **options)
        crop = meta.crop_size
        return Network(
            model=net.eval(),
            name=spec,
            options={**options, "layout": "torchvision", "weights": meta.weights},
            source=meta.describe(),
            image_shape=(3, crop, crop),
            classes=meta.classes,
            mean=list(meta.mean),
            std=list(meta.std),
        )
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        net = create_model(spec, **options)
    return Network(
        model=net.eval(),
        name=spec,
        options=options,
        source=f"random weights (seed {SEED})",
        image_shape=None,
        classes=None,
        mean=None,
        std=None,
    )


def export(
    source: str | Path,
    out: str | Path,
    *,
    format: str,
    fold_bn: bool = False,
    input_size: int | None = None,
    model_options: dict[str, object] | None = None,
    opset: int | None = None,
    weights: str | None = None,
) -> ExportResult:
    """Export a network to `out` and check the written file against PyTorch's logits.

    Args:
        source: a checkpoint file, a run folder or a registered model name (random weights);
            see `resolve_network`.
        out: the file to write; the sidecar goes to `out` + ".json". Its folder is created.
        format: "onnx" or "torchscript".
        fold_bn: fold batch norms into the convolutions they follow (`fold_batchnorm`).
        input_size: side of the square input; default: the checkpoint's training images, else
            the size on the model's card.
        model_options: builder options for a model name, e.g. {"layout": "torchvision"}.
        weights: torchvision's published weights for a model name ("IMAGENET1K_V1").
        opset: ONNX opset version (default: the exporter's, recorded in the sidecar).

    Raises:
        ExportPackageError: the format's packages are not installed (checked first).
        ExportError: the exporter failed, or the exported file's logits differ from
            PyTorch's by more than the tolerance; nothing is left at `out`.
        ValueError: an unknown format, a bad source, an input the network cannot take.
    """
    if format not in FORMATS:
        raise ValueError(f"export format {format!r} is not one of {', '.join(FORMATS)}")
    if opset is not None and format != "onnx":
        raise ValueError(f"an opset applies to ONNX export, not {format}")
    _require_packages(format)
    if opset is not None:
        _check_opset(opset)
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"{out} is a folder; give the file to write, e.g. {out / 'model.onnx'}")
    network = resolve_network(source, model_options, weights)
    shape = _input_shape(network, input_size)

    # Inputs are standard normal, the scale of normalised images; the check's batch differs in
    # size from the traced one, so a batch size baked into the graph fails the check.
    generator = torch.Generator().manual_seed(SEED)
    images = torch.randn(CHECK_IMAGES, *shape, generator=generator)
    with torch.no_grad():
        try:
            reference = network.model(images)
        except RuntimeError as e:
            raise ValueError(
                f"{network.name} cannot take a {'x'.join(map(str, shape))} input "
                f"({_first_line(e)}); choose another --input-size"
            ) from None

    model, folded, left = network.model, 0, ()
    if fold_bn:
        model, folded = _fold_batchnorm(network.model)
        left = tuple(n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d))

    if format == "onnx":
        proto, versions = _to_onnx(model, images[:EXPORT_IMAGES], network.name, opset)

        def write(f: IO[bytes]) -> None:
            f.write(proto.SerializeToString())

        run = _run_onnx
    else:
        traced, versions = _to_torchscript(model, images[:EXPORT_IMAGES], network.name)

        def write(f: IO[bytes]) -> None:
            with _quiet_torchscript():
                torch.jit.save(traced, f)

        run = _run_torchscript

    scale = max(1.0, float(reference.abs().max()))
    tolerance = RELATIVE_TOLERANCE * scale
    measured: list[float] = []

    def check(path: Path) -> None:
        try:
            logits = run(path, images)
        except Exception as e:  # onnxruntime raises its own types (InvalidArgument, Fail, ...)
            raise ExportError(
                f"the exported {format} file does not run on a batch of {CHECK_IMAGES} "
                f"({_first_line(e)}); nothing written to {out}"
            ) from e
        if logits.shape != reference.shape:
            raise ExportError(
                f"the exported {format} network returns {tuple(logits.shape)} for a batch of "
                f"{CHECK_IMAGES}, PyTorch {tuple(reference.shape)}; nothing written to {out}"
            )
        diff = float((logits.double() - reference.double()).abs().max())
        if not diff <= tolerance:  # also NaN
            raise ExportError(
                f"the exported {format} network's logits differ from PyTorch's by up to "
                f"{diff:.3g}, more than the tolerance {tolerance:.3g} "
                f"({RELATIVE_TOLERANCE:g} x max(1, max|logit|)); nothing written to {out}"
            )
        measured.append(diff)

    out.parent.mkdir(parents=True, exist_ok=True)
    sidecar = out.with_name(out.name + ".json")
    atomic_write(out, write, check)
    folding = {"folded": folded, "left": list(left)} if fold_bn else None
    info = _sidecar(network, out, format, shape, reference.shape[1], versions, folding)
    info["check"] = {
        "runtime": versions["runtime"],
        "images": CHECK_IMAGES,
        "inputs": f"standard normal, seed {SEED}",
        "max_abs_diff": measured[0],
        "tolerance": tolerance,
        "against": "the PyTorch network in eval mode, float32, unfolded",
    }
    try:
        atomic_write(sidecar, lambda f: f.write(json.dumps(info, indent=1).encode() + b"\n"))
    except BaseException:
        out.unlink(missing_ok=True)  # a file without its sidecar is not what was asked for
        raise
    return ExportResult(
        path=out,
        sidecar=sidecar,
        format=format,
        input_shape=shape,
        max_abs_diff=measured[0],
        tolerance=tolerance,
        batchnorms_folded=folded,
        batchnorms_left=left,
    )


def fold_batchnorm(net: nn.Module) -> nn.Module:
    """A copy of `net` in eval mode with batch norms folded into the convolutions they follow.

    A BatchNorm2d that directly follows a Conv2d (the conv's output feeds the batch norm and
    nothing else) computes, in eval mode, an affine map per channel: gamma (y - mean) /
    sqrt(var + eps) + beta. The conv's weight is scaled by gamma / sqrt(var + eps) per output
    channel and its bias becomes (bias - mean) * that scale + beta, computed in float64 and
    rounded once to the weights' dtype. The data flow comes from `torch.fx.symbolic_trace`, so
    the result is a `torch.fx.GraphModule` of `forward` (a GoogLeNet's auxiliary classifiers,
    which `forward` does not run, are not in it).

    Batch norms that cannot be folded (after a ReLU, an addition or a pool, as in the
    pre-activation ResNets; without running statistics; modules called twice) are left as
    they are: they are the BatchNorm2d modules that remain in the result, under their names.

    Raises:
        ValueError: `forward` cannot be traced by torch.fx (data-dependent control flow).
    """
    return _fold_batchnorm(net)[0]


def _fold_batchnorm(net: nn.Module) -> tuple[fx.GraphModule, int]:
    """`fold_batchnorm`, and how many batch norms it folded."""
    try:
        graph_module = fx.symbolic_trace(copy.deepcopy(net).eval())
    except Exception as e:  # fx raises TraceError, TypeError, ... from user code
        raise ValueError(
            f"batch norms cannot be folded in {type(net).__name__}: torch.fx cannot trace its "
            f"forward ({_first_line(e)}); export it without folding"
        ) from None
    modules = dict(graph_module.named_modules())
    calls = Counter(n.target for n in graph_module.graph.nodes if n.op == "call_module")
    folded = 0
    for node in list(graph_module.graph.nodes):
        bn = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, nn.BatchNorm2d) or len(node.args) != 1 or node.kwargs:
            continue
        producer = node.args[0]
        conv = modules.get(producer.target) if producer.op == "call_module" else None
        if (
            not isinstance(conv, nn.Conv2d)
            or len(producer.users) != 1  # another user needs the conv's unnormalised output
            or calls[producer.target] != 1
            or calls[node.target] != 1
            or bn.running_mean is None  # no running statistics: batch statistics in eval too
            or bn.running_var is None
        ):
            continue
        _set_submodule(graph_module, str(producer.target), _fold(conv, bn))
        node.replace_all_uses_with(producer)
        graph_module.graph.erase_node(node)
        folded += 1
    graph_module.graph.lint()
    graph_module.delete_all_unused_submodules()
    graph_module.recompile()
    return graph_module.eval(), folded


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    dtype = conv.weight.dtype
    weight, bias = fuse_conv_bn_weights(
        conv.weight.detach().double(),
        None if conv.bias is None else conv.bias.detach().double(),
        bn.running_mean.double(),
        bn.running_var.double(),
        bn.eps,
        bn.weight.detach().double() if bn.affine else None,
        bn.bias.detach().double() if bn.affine else None,
    )
    fused = copy.deepcopy(conv)
    fused.weight = nn.Parameter(weight.detach().to(dtype))
    fused.bias = nn.Parameter(bias.detach().to(dtype))
    return fused


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def _require_packages(format: str) -> None:
    problems = []
    for name in _PACKAGES[format]:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError:
            problems.append(f"{name} is not installed")
        except ImportError as e:  # installed but broken, e.g. built for another numpy
            problems.append(f"{name} cannot be imported: {_first_line(e)}")
    if problems:
        raise ExportPackageError(
            f"{_FORMAT_NAMES[format]} export needs {', '.join(_PACKAGES[format])} "
            f"({'; '.join(problems)}): pip install 'cnnlab[export]'"
        )


def _input_shape(network: Network, input_size: int | None) -> tuple[int, int, int]:
    if input_size is not None and input_size < 1:
        raise ValueError(f"input size must be a positive number of pixels, not {input_size}")
    if network.image_shape is None:
        size = input_size or model_card(network.name).input_size
        return (3, size, size)
    channels, height, width = network.image_shape
    if input_size is None:
        return network.image_shape
    mean = torch.as_tensor(network.mean)
    if mean.dim() == 3 and (input_size, input_size) != (height, width):
        raise ValueError(
            f"the checkpoint's per-pixel mean is {height}x{width}, so its inputs are too; "
            f"--input-size {input_size} would leave them without a mean to subtract"
        )
    return (channels, input_size, input_size)


def _check_opset(opset: int) -> None:
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ValueError(
            f"opset {opset} is outside what the exporter writes with this onnx {onnx.__version__}: "
            f"{MIN_OPSET} to {newest}"
        )


def _to_onnx(
    model: nn.Module, example: Tensor, name: str, opset: int | None
) -> tuple[Any, dict[str, object]]:
    import onnx
    import onnxruntime

    batch = torch.export.Dim("batch")
    try:
        # The exporter's notes on its own work (warnings; some onnxscript releases print what
        # their optimizer did) are not for the user of cnnlab export, who gets one line.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                verbose=False,
                opset_version=opset,
                input_names=["images"],
                output_names=["logits"],
                dynamic_shapes=({0: batch},),
            )
    except Exception as e:
        raise ExportError(f"torch.onnx.export could not export {name}: {_first_line(e)}") from e
    proto = program.model_proto
    opset_used = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if opset is not None and opset_used != opset:  # the exporter falls back without an error
        raise ExportError(
            f"torch.onnx.export could not convert {name} to opset {opset} (it wrote opset "
            f"{opset_used}); choose another --opset"
        )
    return proto, {
        "opset": opset_used,
        "onnx": onnx.__version__,
        "runtime": f"onnxruntime {onnxruntime.__version__} (CPUExecutionProvider)",
    }


def _run_onnx(path: Path, images: Tensor) -> Tensor:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"images": images.numpy()})
    return torch.from_numpy(logits)


def _to_torchscript(
    model: nn.Module, example: Tensor, name: str
) -> tuple[torch.jit.ScriptModule, dict[str, object]]:
    try:
        with _quiet_torchscript(), torch.no_grad():
            traced = torch.jit.trace(model, example, check_trace=False)
    except Exception as e:
        raise ExportError(f"torch.jit.trace could not trace {name}: {_first_line(e)}") from e
    return traced, {"runtime": f"torch.jit.load (torch {torch.__version__})"}


def _run_torchscript(path: Path, images: Tensor) -> Tensor:
    with _quiet_torchscript(), torch.no_grad():
        return torch.jit.load(str(path), map_location="cpu")(images)


@contextmanager
def _quiet_torchscript() -> Iterator[None]:
    # torch 2.14 warns "`torch.jit.trace` is deprecated" on every call (module docstring).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", FutureWarning)
        yield


def _sidecar(
    network: Network,
    out: Path,
    format: str,
    shape: tuple[int, int, int],
    num_outputs: int,
    versions: dict[str, object],
    folding: dict[str, object] | None,
) -> dict[str, object]:
    """What a user needs to feed the exported file, and where it came from."""
    from cnnlab import __version__

    if network.mean is None:
        normalization: dict[str, object] | str = (
            f"none: {network.source} has no training statistics (and its outputs mean nothing)"
        )
    else:
        normalization = {
            "mean": network.mean,
            "std": network.std,
            "formula": "(pixel / 255 - mean) / std, per channel; a C x H x W mean is per pixel",
        }
    return {
        "file": out.name,
        "format": format,
        "model": network.name,
        "model_options": network.options,
        "source": network.source,
        "input": {
            "name": "images" if format == "onnx" else None,
            "shape": ["batch", *shape],
            "dtype": "float32",
            "layout": "N x C x H x W, RGB, normalised",
        },
        "output": {
            "name": "logits" if format == "onnx" else None,
            "shape": ["batch", num_outputs],
            "meaning": "logits (softmax gives class probabilities)",
        },
        "normalization": normalization,
        "classes": list(network.classes) if network.classes else None,
        # With --fold-bn: how many were folded into the convs before them, which were not.
        "batchnorm": folding,
        "versions": {
            "cnnlab": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            **{k: v for k, v in versions.items() if k != "runtime"},
        },
    }


def _plain(value: object) -> list[Any]:
    return torch.as_tensor(value, dtype=torch.float64).tolist()


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
