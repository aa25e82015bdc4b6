"""The `cnnlab` command line: each subcommand is a few lines that call the library.

cnnlab models [PATTERN] [--options]
cnnlab summary MODEL [--input-size N] [-O KEY=VALUE ...] [--json]
cnnlab compare SPEC SPEC ... [--input-size N] [--json]
cnnlab visualize filters|activations|deconv|responses|curves|time-to-accuracy ...
cnnlab experiment degradation|depth|shortcuts|identity-mappings|relu-vs-tanh --out DIR ...
cnnlab export CHECKPOINT_OR_MODEL --format onnx|torchscript --out FILE [--fold-bn]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from cnnlab.analysis.comparison import compare
from cnnlab.analysis.complexity import profile
from cnnlab.analysis.features import METHODS
from cnnlab.analysis.responses import RESPONSE_IMAGES
from cnnlab.analysis.tables import models_table, options_table
from cnnlab.models.registry import UnknownModelError, list_models
from cnnlab.options import parse_options
from cnnlab.train.hardware import PRECISION_CHOICES
from cnnlab.train.recipes import RECIPES

PRECISION_HELP = "auto (default): bf16 where the hardware runs it natively, else fp32"
WEIGHTS_HELP = (
    "torchvision's published weights for the model, e.g. IMAGENET1K_V1 or DEFAULT "
    "(downloaded on first use into torch's hub cache)"
)


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def _cmd_models(args: argparse.Namespace) -> int:
    names = list_models(args.pattern)
    if not names:
        raise CliError(f"no model matches {args.pattern!r}; `cnnlab models` lists them all")
    if args.options:
        print("\n\n".join(options_table(name) for name in names))
    else:
        print(models_table(names, markdown=args.markdown))
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    result = profile(args.model, args.input_size, **parse_options(args.option))
    print(result.to_json() if args.json else result.table())
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    result = compare(args.specs, args.input_size)
    print(result.to_json() if args.json else result.table())
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from cnnlab.train import TrainingDiverged, train_from_spec

    try:
        train_from_spec(
            args.model, args.data, args.out, recipe=args.recipe, split=args.split,
            steps=args.steps, epochs=args.epochs, time_minutes=args.time, budget=args.budget,
            batch_size=args.batch_size, lr=args.lr, skip_corrupt=args.skip_corrupt,
            precision=args.precision, seed=args.seed, device=args.device, compile=args.compile,
            resume=args.resume, eval_every=args.eval_every,
            model_options=parse_options(args.option),
            recipe_options=parse_options(args.recipe_option, "recipe option", "cutout=8"),
            progress=not args.quiet, data_mode=args.data_mode, workers=args.workers,
        )  # fmt: skip
    except TrainingDiverged as e:  # not a usage error: exit status 1
        print(f"cnnlab: error: {e}", file=sys.stderr)
        return 1
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from cnnlab.train import evaluate_from_spec

    r = evaluate_from_spec(
        args.checkpoint, args.data, split=args.split, device=args.device,
        batch_size=args.batch_size, precision=args.precision, tta=args.tta,
        test_time=args.test_time, scales=args.scales, resize=args.resize, crop=args.crop,
        workers=args.workers, weights=args.weights,
    )  # fmt: skip
    how = ", test-time augmentation: flip (mirror averaged)" if args.tta == "flip" else ""
    if getattr(r, "method", None):
        how = f", test-time method {r.method}"
    print(
        f"top-1 error {r.top1_error:.2f}%  top-5 error {r.top5_error:.2f}%  "
        f"({r.images:,} images, {args.split} split of {args.data}{how})"
    )
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from cnnlab.train import predict

    found = predict(
        args.checkpoint, args.images, top=args.top, device=args.device, weights=args.weights
    )
    for p in found:
        ranked = zip(p.classes, p.probabilities, strict=True)
        print(f"{p.path}: " + ", ".join(f"{name} {100 * q:.1f}%" for name, q in ranked))
    return 0


def _cmd_visualize(args: argparse.Namespace) -> int:
    from cnnlab.analysis import plots

    if args.figure == "filters":
        path = plots.draw_filters(args.checkpoint, args.out, weights=args.weights)
    elif args.figure == "activations":
        path = plots.draw_activations(
            args.checkpoint, args.image, args.out, channels=args.channels, layers=args.layers,
            weights=args.weights,
        )  # fmt: skip
    elif args.figure == "deconv":
        path = plots.draw_deconv(
            args.checkpoint, args.data or "cifar10", args.out, layer=args.layer,
            channels=args.channels, split=args.split, limit=args.limit or None, top=args.top,
            weights=args.weights, images=args.images, methods=args.method,
        )  # fmt: skip
    elif args.figure == "responses":
        path = plots.draw_responses(
            args.runs, args.data, args.out, split=args.split, limit=args.limit or None,
            title=args.title,
        )  # fmt: skip
    elif args.figure == "time-to-accuracy":
        from cnnlab.analysis.time_to_accuracy import time_to_accuracy_table

        path, timelines = plots.draw_time_to_accuracy(args.runs, args.target, args.out, args.title)
        print(time_to_accuracy_table(timelines, args.target))
    else:
        path = plots.draw_curves(args.runs, args.out, args.title)
    print(f"wrote {path}")
    return 0


def _cmd_experiment(args: argparse.Namespace) -> int:
    from cnnlab.experiments import run_experiment

    report = run_experiment(
        args.name, args.data, args.out, budget=args.budget, steps=args.steps, seeds=args.seeds,
        recipe=args.recipe, precision=args.precision, batch_size=args.batch_size,
        limit_train=args.limit_train, limit_test=args.limit_test, lrs=args.lrs,
        device=args.device, compile=args.compile, progress=not args.quiet, jobs=args.jobs,
        report_only=args.report_only,
    )  # fmt: skip
    print(f"wrote {report}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from cnnlab.export import ExportError, ExportPackageError, export

    try:
        result = export(
            args.source, args.out, format=args.format, fold_bn=args.fold_bn,
            input_size=args.input_size, model_options=parse_options(args.option),
            opset=args.opset, weights=args.weights,
        )  # fmt: skip
    except ExportPackageError as e:
        raise CliError(str(e)) from None
    except ExportError as e:  # the exporter or the check failed: not a usage error, status 1
        print(f"cnnlab: error: {e}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnnlab",
        description="The classic ImageNet-era CNNs: build, measure, train, reproduce.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="table of registered networks")
    p.add_argument("pattern", nargs="?", help="fnmatch pattern, e.g. 'resnet*'")
    p.add_argument("--markdown", action="store_true", help="a Markdown table (as in the README)")
    p.add_argument("--options", action="store_true",
                   help="each model's options (-O), their values and parameters")  # fmt: skip
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("summary", help="per-layer table and totals of a network")
    p.add_argument("model")
    p.add_argument("--input-size", type=int, help="side of the square input (default: the card's)")
    p.add_argument("-O", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="model option, e.g. -O factorize=5x5 -O layout=torchvision")  # fmt: skip
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_summary)

    p = sub.add_parser(
        "compare",
        help="networks side by side: params, MACs, receptive field, ratios to the first",
        description="Each SPEC is a model name with options as -O writes them, "
        "NAME:KEY=VALUE,KEY=VALUE (googlenet:factorize=5x5), or conv_stack:kernels=K,K,... "
        "(convs from C to C channels, channels=C, default 64; a kernel is n or HxW, e.g. 1x3) "
        "for a layer-level comparison. Example: cnnlab compare vgg19 resnet34",
    )
    p.add_argument("specs", nargs="+", metavar="SPEC")
    p.add_argument("--input-size", type=int,
                   help="side of the square input, for all (default: each card's; conv_stack: "
                   "56)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_compare)

    # -- subcommands of cnnlab.train are registered below (train, eval, predict) --
    p = sub.add_parser("train", help="train a network; a run folder records everything")
    p.add_argument("model", help="a registered name (see `cnnlab models`), e.g. resnet20")
    p.add_argument("--data", default="cifar10", help="cifar10 (default), cifar100 or a path")
    p.add_argument("--out", required=True, help="run folder: config, metrics, checkpoints")
    p.add_argument("--recipe", default="fast", choices=tuple(RECIPES),
                   help="default: fast (CIFAR); ImageNet folders: alexnet2012, vgg2014, "
                   "googlenet2014, resnet2015")  # fmt: skip
    p.add_argument("--split", default="full", choices=("full", "45k"),
                   help="full: all training images; 45k: the paper's 45k/5k split")  # fmt: skip
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimizer steps (milestones scale along)")
    length.add_argument("--epochs", type=float, help="passes over the training images")
    length.add_argument("--time", type=float, metavar="MINUTES",
                        help="size the run to end in about this many minutes here")  # fmt: skip
    p.add_argument("--budget", type=float, help="scale the recipe's steps and milestones")
    p.add_argument("--batch-size", type=int, help="global batch (split across processes)")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--skip-corrupt", action="store_true",
                   help="leave out unreadable images (counted) instead of stopping")  # fmt: skip
    p.add_argument("--data-mode", default="auto", choices=("auto", "memory", "stream"),
                   help="memory: decode all once (small images); stream: read image folders "
                   "image by image with --workers processes; auto (default): by size")  # fmt: skip
    p.add_argument("--workers", type=int,
                   help="loader processes for streamed data (default: CPUs, <= 8)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=PRECISION_CHOICES,
                   help=PRECISION_HELP)  # fmt: skip
    p.add_argument("--compile", action="store_true", help="torch.compile the training step")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: the GPU if any)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument(
        "--eval-every",
        type=int,
        help="steps between evaluations (default: <=1 an epoch, <=10 a run)",
    )
    p.add_argument("-O", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="model option, e.g. -O shortcut=B")  # fmt: skip
    p.add_argument("-R", "--recipe-option", action="append", default=[], metavar="KEY=VALUE",
                   help="recipe field, e.g. -R cutout=8 -R flip=alternate")  # fmt: skip
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or per-eval lines")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="top-1 and top-5 error of a checkpoint")
    p.add_argument("checkpoint", help="a checkpoint file or a run folder (its checkpoint.pt), "
                   "or a model name with --weights")  # fmt: skip
    p.add_argument("--data", default="cifar10", help="cifar10, cifar100 or a path")
    p.add_argument("--split", default="test", help="default: test")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                   help=PRECISION_HELP)  # fmt: skip
    p.add_argument("--tta", choices=("none", "flip"), default="none",
                   help="flip: average each image's logits with its mirror's")  # fmt: skip
    p.add_argument("--test-time", choices=("center", "10crop", "dense"),
                   help="the papers' methods: one centre crop; 10 crops (4 corners, centre, "
                   "mirrored; AlexNet, ResNet); dense, fully convolutional at --scales (VGG, "
                   "ResNet); class posteriors averaged")  # fmt: skip
    p.add_argument("--weights", metavar="NAME",
                   help="torchvision's weights for a model name given instead of a checkpoint, "
                   "e.g. resnet50 --weights IMAGENET1K_V2")  # fmt: skip
    p.add_argument("--resize", type=int, metavar="N",
                   help="center/10crop: shorter side (default: the network's, 256)")  # fmt: skip
    p.add_argument("--crop", type=int, metavar="N",
                   help="center/10crop: crop side (default: input size; 320: He 2016)")  # fmt: skip
    p.add_argument("--scales", metavar="S,S,...",
                   help="for --test-time dense (default: 224,256,384,480,640)")  # fmt: skip
    p.add_argument("--workers", type=int,
                   help="loader processes for streamed data (default: CPUs, <= 8)")  # fmt: skip
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: the GPU if any)")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser(
        "predict", help="most probable classes of your own images (resized to the training size)"
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT|MODEL",
                   help="a checkpoint file or a run folder (its checkpoint.pt); with --weights, "
                   "a model name")  # fmt: skip
    p.add_argument("images", nargs="+",
                   help="image files; each is resized as a whole by PIL (with --weights: "
                   "shorter side resized, centre crop, as torchvision's transforms)")  # fmt: skip
    p.add_argument("--weights", metavar="NAME", help=WEIGHTS_HELP + "; classes are ImageNet's")
    p.add_argument("--top", type=int, default=5, help="classes to show per image (default: 5)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: the GPU if any)")
    p.set_defaults(func=_cmd_predict)

    # -- cnnlab visualize: figures of what a network sees (cnnlab.analysis.plots) --
    p = sub.add_parser(
        "visualize",
        help="PNG figures: filters, activations, deconvnet, responses, curves, time to accuracy",
    )
    vis = p.add_subparsers(dest="figure", required=True, metavar="FIGURE")
    net_help = "a checkpoint, a run folder, or a model name (random weights, or --weights)"
    vis_weights_help = WEIGHTS_HELP + "; images then go in as torchvision's transforms for them"
    v = vis.add_parser("filters", help="the first layer's kernels as an image grid")
    v.add_argument("checkpoint", metavar="CHECKPOINT|MODEL", help=net_help)
    v.add_argument("--weights", metavar="NAME", help=WEIGHTS_HELP)
    v.add_argument("--out", default="filters.png", help="PNG file (default: filters.png)")
    v = vis.add_parser("activations", help="the feature maps of each stage for one image")
    v.add_argument("checkpoint", metavar="CHECKPOINT|MODEL", help=net_help)
    v.add_argument("image", help="an image file (resized to the network's input size)")
    v.add_argument("--weights", metavar="NAME", help=vis_weights_help)
    v.add_argument("--channels", type=int, default=8, help="maps shown per stage (default: 8)")
    v.add_argument("--layers", nargs="+", metavar="NAME",
                   help="module paths or conv labels (default: each stage)")  # fmt: skip
    v.add_argument("--out", default="activations.png", help="PNG file (default: activations.png)")
    v = vis.add_parser(
        "deconv",
        help="deconvnet, guided backprop or gradient: top images per channel",
        description="For each channel, the images (of --data, or your own --images) that "
        "excite it most, the projection of that unit to pixel space (--method), and the image "
        "patch under its receptive field. Example: cnnlab visualize deconv alexnet --weights "
        "IMAGENET1K_V1 --layer conv5 --images photos/ --method deconvnet guided",
    )
    v.add_argument("checkpoint", metavar="CHECKPOINT|MODEL", help=net_help)
    v.add_argument("--weights", metavar="NAME", help=vis_weights_help)
    v.add_argument("--layer", required=True,
                   help="module path or conv label: features.12, conv5, layer3")  # fmt: skip
    v.add_argument("--channels", type=int, nargs="+", metavar="C",
                   help="feature maps (default: the 4 with the largest activations)")  # fmt: skip
    source = v.add_mutually_exclusive_group()
    source.add_argument("--data",
                        help="dataset searched: cifar10 (default), cifar100 or a path")  # fmt: skip
    source.add_argument("--images", nargs="+", metavar="PATH",
                        help="search your own photos instead: image files and folders of them "
                        "(not subfolders), any sizes, each resized to the network's input "
                        "(with --weights: shorter side resized, centre crop); labelled by "
                        "file name")  # fmt: skip
    v.add_argument("--split", default="test", help="split of --data (default: test)")
    v.add_argument("--limit", type=int, default=2000,
                   help="images of --data searched, spread over the split (0: all)")  # fmt: skip
    v.add_argument("--top", type=int, default=9, help="images per channel (default: 9)")
    v.add_argument("--method", nargs="+", choices=METHODS, default=["deconvnet"],
                   help="projection to pixel space: deconvnet (default; Zeiler & Fergus), "
                   "guided (guided backpropagation, Springenberg et al. 2015: also gated by the "
                   "image's own ReLU pattern, so it sees the image without max pooling), "
                   "saliency (the plain gradient); several: side by side")  # fmt: skip
    v.add_argument("--out", default="deconv.png", help="PNG file (default: deconv.png)")
    v = vis.add_parser(
        "responses",
        help="std of each 3x3 layer's response, by layer and sorted (He et al. 2015, Fig. 7)",
        description="For each run, the standard deviation of each 3x3 layer's response (after "
        "batch norm, before the ReLU or the addition) over images of --data: per channel over "
        "the images and positions, averaged over the layer's channels. Two panels, by layer "
        "index and sorted, one line per run. Example: cnnlab visualize responses runs/plain20 "
        "runs/resnet20 runs/resnet56 --data cifar10",
    )
    v.add_argument("runs", nargs="+", metavar="RUN",
                   help="run folders or checkpoints of conv-BN nets (plain, ResNet)")  # fmt: skip
    v.add_argument("--data", default="cifar10", help="cifar10 (default), cifar100 or a path")
    v.add_argument("--split", default="test", help="split of --data (default: test)")
    v.add_argument("--limit", type=int, default=RESPONSE_IMAGES,
                   help=f"images of --data, spread over the split (default: {RESPONSE_IMAGES}; "
                   "0: all)")  # fmt: skip
    v.add_argument("--title", default="", help="figure title")
    v.add_argument("--out", default="responses.png", help="PNG file (default: responses.png)")
    v = vis.add_parser("curves", help="training (dashed) and test (bold) error of runs")
    v.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (metrics.jsonl)")
    v.add_argument("--title", default="", help="figure title")
    v.add_argument("--out", default="curves.png", help="PNG file (default: curves.png)")
    v = vis.add_parser(
        "time-to-accuracy",
        help="test error against training minutes of runs; prints time to a target error",
        description="Test error against training time (log scale; evaluations left out) for "
        "run folders, each labelled with the machine its config.json records, and a markdown "
        "table of the epochs and minutes each took to first reach --target. Example: cnnlab "
        "visualize time-to-accuracy runs/fast-r20 runs/he2015-r20 --target 11.9",
    )
    v.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (metrics.jsonl)")
    v.add_argument("--target", type=float, required=True, help="test error to reach, in %%")
    v.add_argument("--title", default="", help="figure title")
    v.add_argument("--out", default="time-to-accuracy.png",
                   help="PNG file (default: time-to-accuracy.png)")  # fmt: skip
    p.set_defaults(func=_cmd_visualize)

    # -- cnnlab experiment: the papers' CIFAR-10 experiments (cnnlab.experiments) --
    from cnnlab.experiments.definitions import EXPERIMENTS

    p = sub.add_parser("experiment", help="reproduce a paper experiment: runs, figures, report.md")
    p.add_argument("name", choices=tuple(EXPERIMENTS))
    p.add_argument("--data", default="cifar10", help="cifar10 (default), cifar100 or a path")
    p.add_argument("--out", required=True, help="experiment folder (rerun it to resume)")
    length = p.add_mutually_exclusive_group()
    length.add_argument(
        "--budget", type=float, help="fraction of the recipe's steps (he2015: of 64k; default 1); "
        "relu-vs-tanh: of each run's cap (15,600 steps, 40 epochs)",
    )  # fmt: skip
    length.add_argument("--steps", type=int, help="optimizer steps per run instead (its cap)")
    p.add_argument("--seeds", type=int, default=1, help="runs per network (default: 1)")
    p.add_argument("--recipe", choices=("he2015", "fast", "relu2012"),
                   help="default: the paper's (he2015; relu2012 for relu-vs-tanh)")  # fmt: skip
    p.add_argument("--lrs", type=_floats, metavar="LR,LR,...",
                   help="relu-vs-tanh: the learning-rate grid searched (ascending)")  # fmt: skip
    p.add_argument("--precision", choices=PRECISION_CHOICES,
                   help="default: the recipe's (fp32 for relu2012); " + PRECISION_HELP)  # fmt: skip
    p.add_argument("--batch-size", type=int, help="default: the recipe's")
    p.add_argument("--limit-train", type=int, help="train on this many images (default: all)")
    p.add_argument("--limit-test", type=int, help="test on this many images (default: all)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: the GPU if any)")
    p.add_argument("--compile", action="store_true", help="torch.compile the training step")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs trained at once, a process each (on a CPU each gets its share of "
                   "the cores; default: 1)")  # fmt: skip
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: the report of the runs that have ended, with the same "
                   "options as the command that trained them")  # fmt: skip
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or run lines")
    p.set_defaults(func=_cmd_experiment)

    # -- cnnlab export: ONNX or TorchScript, checked against PyTorch (cnnlab.export) --
    p = sub.add_parser("export", help="ONNX or TorchScript file of a network, checked by running")
    p.add_argument("source", metavar="CHECKPOINT_OR_MODEL",
                   help="a checkpoint, a run folder, or a model name (random weights)")  # fmt: skip
    p.add_argument("--format", required=True, help="onnx (needs cnnlab[export]) or torchscript")
    p.add_argument("--out", required=True, help="the file; FILE.json beside it says what to feed")
    p.add_argument("--fold-bn", action="store_true",
                   help="fold each batch norm into the conv before it")  # fmt: skip
    p.add_argument(
        "--input-size",
        type=int,
        help="side of the square input (default: as trained, or the card's)",
    )
    p.add_argument("-O", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="model option for a model name, e.g. -O layout=torchvision")  # fmt: skip
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--weights", metavar="NAME",
                   help="torchvision's weights for a model name, e.g. IMAGENET1K_V1")  # fmt: skip
    p.set_defaults(func=_cmd_export)

    return parser


def _floats(text: str) -> tuple[float, ...]:
    """ "0.01,0.02,0.04" -> (0.01, 0.02, 0.04), for argparse."""
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of numbers: {text!r}"
        ) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    format_warning = warnings.formatwarning
    warnings.formatwarning = _format_warning
    try:
        return args.func(args)
    except (CliError, UnknownModelError, ValueError, OSError) as e:
        # User errors are one line naming the problem and what to do, never a traceback.
        print(f"cnnlab: error: {e}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = format_warning


def _format_warning(message: Warning | str, *args: object, **kwargs: object) -> str:
    """Warnings as one line, like errors (not Python's file:line and source line)."""
    return f"cnnlab: warning: {message}\n"
