"""Figures as PNG files: filter grids, stage activations, deconvnet projections, error curves.

Each function draws one figure with matplotlib's Agg renderer (no display, no pyplot state)
and writes it to a PNG file. Figures are meant to be read as they are: titles say what is
shown and of which network, axes are labelled, panels carry class names, curves a legend.

    plot_filters       first-layer kernels as RGB images (Krizhevsky et al. 2012, Fig. 3)
    plot_activations   the first maps of each stage for one image
    plot_deconv        top images of some channels: projections beside the image patches
                       (Zeiler and Fergus 2013, Fig. 2); with several methods (deconvnet,
                       guided backpropagation, gradient), the same units side by side
                       (Springenberg et al. 2015, Fig. 1)
    plot_curves        training (dashed) and test (bold) error against iterations for several
                       runs (He et al. 2015, Fig. 1 and Fig. 6)
    plot_responses     the std of each 3x3 layer's response, by layer index and sorted, for
                       several runs (He et al. 2015, Fig. 7)
    plot_time_to_accuracy
                       test error against training minutes for several runs, with a target
                       error and where each run first reached it
"""

from __future__ import annotations

import math
import textwrap
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from torch import Tensor

from cnnlab.analysis.features import (
    ChannelProjections,
    Network,
    check_method,
    deconv_top_images,
    describe_layers,
    first_conv,
    kernel_images,
    load_image,
    load_images,
    load_network,
    resolve_layer,
    spread_subset,
    stage_outputs,
)
from cnnlab.analysis.responses import RESPONSE_IMAGES, LayerResponses, run_responses
from cnnlab.analysis.time_to_accuracy import (
    Timeline,
    metrics_rows,
    reached,
    read_timeline,
    seed_groups,
)
from cnnlab.models.registry import UnknownModelError, model_card

__all__ = [
    "RunCurves",
    "curves_figure",
    "draw_activations",
    "draw_curves",
    "draw_deconv",
    "draw_filters",
    "draw_responses",
    "draw_time_to_accuracy",
    "plot_activations",
    "plot_curves",
    "plot_deconv",
    "plot_filters",
    "plot_responses",
    "plot_time_to_accuracy",
    "read_run",
    "responses_figure",
    "time_to_accuracy_figure",
]

DPI = 110

# How figures name the projection methods of `features.METHODS`: in titles, and beside panels.
METHOD_TITLES = {
    "deconvnet": "deconvnet (Zeiler & Fergus 2013, Fig. 2)",
    "guided": "guided backpropagation (Springenberg et al. 2015)",
    "saliency": "saliency, the plain gradient (Simonyan et al. 2014)",
}
METHOD_LABELS = {"deconvnet": "deconvnet", "guided": "guided backprop", "saliency": "gradient"}


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: figures are written as PNG; name a .png file")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)
    return path


def _run_colors(n: int) -> list[str | tuple[float, ...]]:
    """One colour per line: matplotlib's ten, or twenty paired shades past ten lines.

    The ten default colours repeat from the eleventh line on, and two runs would share one.
    """
    if n <= 10:
        return [f"C{i}" for i in range(n)]
    shades = colormaps["tab20"].colors
    return [shades[i % len(shades)] for i in range(n)]


def _grid(n: int, columns: int | None = None) -> tuple[int, int]:
    """(rows, columns) of a near-square grid of n panels."""
    cols = min(n, columns) if columns else max(1, math.ceil(math.sqrt(n)))
    return math.ceil(n / cols), cols


def _hwc(image: Tensor) -> Tensor:
    """3 x H x W (uint8 or float 0..1) to H x W x 3 for imshow."""
    return image.permute(1, 2, 0).cpu()


# -- filters ---------------------------------------------------------------------------------


def plot_filters(kernels: Tensor, path: str | Path, title: str) -> Path:
    """The kernels of a first layer as a grid of RGB images.

    Args:
        kernels: K x k x k x 3, each already normalised to 0..1 (`features.kernel_images`).
        path: the PNG file to write.
        title: what is shown, e.g. "zfnet conv1 (features.0): 96 kernels 7x7x3".
    """
    n = kernels.shape[0]
    rows, cols = _grid(n)
    side = min(1.0, 10.0 / cols)
    fig = _new_figure(max(4.0, cols * side), rows * side + 0.9)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < n:
            ax.imshow(kernels[i].numpy(), interpolation="nearest")
    fig.suptitle(f"{title}\neach kernel min-max normalised to the full range", fontsize=10)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.8 / fig.get_figheight(),
                        wspace=0.08, hspace=0.08)  # fmt: skip
    return _save(fig, path)


# -- activations -----------------------------------------------------------------------------


def plot_activations(
    image: Tensor,
    outputs: dict[str, Tensor],
    path: str | Path,
    title: str,
    *,
    channels: int = 8,
    caption: str = "",
) -> Path:
    """One image and the first `channels` feature maps of each stage, one row per stage.

    Args:
        image: uint8 3 x H x W, the image as the network saw it.
        outputs: stage name -> its output for this image, C x h x w (`features.stage_outputs`).
        path: the PNG file to write.
        title: e.g. "resnet20 (checkpoint run/checkpoint.pt)".
        channels: maps shown per stage (the first ones).
        caption: shown under the input image, e.g. the predicted class.
    """
    cols = max(1, channels)
    heights = [0.35 * (title.count("\n") + 1) + 0.3, 2.3] + [1.75] * len(outputs)
    fig = _new_figure(1.35 * cols + 0.4, sum(heights))
    rows = fig.subfigures(len(heights), 1, height_ratios=heights)
    rows[0].text(0.5, 0.5, title, ha="center", va="center", fontsize=11)
    ax = rows[1].subplots(1, 1)
    rows[1].subplots_adjust(top=0.82, bottom=0.04)
    ax.imshow(_hwc(image).numpy())
    ax.set_xticks([])
    ax.set_yticks([])
    h, w = image.shape[-2:]
    ax.set_title(f"input, {h}x{w}" + (f": {caption}" if caption else ""), fontsize=9)
    for sub, (name, maps) in zip(rows[2:], outputs.items(), strict=True):
        c, mh, mw = maps.shape
        sub.suptitle(
            f"{name}: {c} maps of {mh}x{mw} (first {min(cols, c)} shown, each scaled to its "
            "own range: dark low, yellow high)",
            fontsize=9,
        )
        axes = sub.subplots(1, cols, squeeze=False)[0]
        for i, ax in enumerate(axes):
            ax.set_xticks([])
            ax.set_yticks([])
            if i >= c:
                ax.set_axis_off()
                continue
            ax.imshow(maps[i].float().numpy(), cmap="viridis", interpolation="nearest")
            ax.set_xlabel(f"channel {i}", fontsize=7, labelpad=2)
    return _save(fig, path)


# -- deconvnet -------------------------------------------------------------------------------


def _crop(t: Tensor, box: tuple[int, int, int, int]) -> Tensor:
    top, left, bottom, right = box
    return t[:, top:bottom, left:right]


def _signed_to_unit(p: Tensor) -> Tensor:
    """A projection to 0..1 with zero at mid-grey; the 99th percentile of the magnitudes is
    full scale (the largest few saturate), so that faint structure shows."""
    magnitude = p.abs().flatten().float()
    scale = float(torch.quantile(magnitude, 0.99)) if magnitude.numel() else 0.0
    if scale <= 0:
        scale = float(magnitude.max()) if magnitude.numel() else 1.0
    return (0.5 + 0.5 * p / max(scale, 1e-20)).clamp(0, 1)


def plot_deconv(
    results: Sequence[ChannelProjections],
    path: str | Path,
    title: str,
    *,
    layer_label: str = "",
    patch_label: str = "class",
) -> Path:
    """Zeiler and Fergus's Fig. 2: per channel, the projections of its top units beside the
    image patches under their receptive fields.

    With one projection method, a grid of projections beside a grid of patches; with several
    (`deconv_top_images(methods=...)`), one column per unit: its patch, then its projection by
    each method, one row each (Springenberg et al. 2015, Fig. 1, compare them so).

    Args:
        results: from `features.deconv_top_images`.
        path: the PNG file to write.
        title: e.g. "zfnet conv5, top 9 of 2,000 CIFAR-10 test images".
        layer_label: shown with each channel, e.g. "conv5 (features.12)".
        patch_label: what the label under each patch is ("class", "file").
    """
    if not results:
        raise ValueError("no channels to draw")
    methods = results[0].methods
    if len(methods) > 1:
        return _plot_methods(results, path, title, layer_label=layer_label)
    per = max(len(r.units) for r in results)
    grid = _grid(per)
    width = 2 * grid[1] * 1.3 + 0.6
    # Narrow figures (few images per channel) wrap the title: about 11 characters of 10 pt
    # text to the inch.
    title = "\n".join(textwrap.fill(line, int(width * 11)) for line in title.split("\n"))
    heights = [0.3 * (title.count("\n") + 1) + 0.3] + [grid[0] * 1.35 + 0.8] * len(results)
    fig = _new_figure(width, sum(heights))
    rows = fig.subfigures(len(heights), 1, height_ratios=heights, squeeze=False)[:, 0]
    rows[0].text(0.5, 0.5, title, ha="center", va="center", fontsize=10)
    for block, res in zip(rows[1:], results, strict=True):
        name = layer_label or res.layer
        h, w = res.map_size
        block.suptitle(
            f"{name}, channel {res.channel} ({h}x{w} map): its {len(res.units)} strongest units",
            fontsize=10,
            y=0.99,
        )
        left, right = block.subfigures(1, 2, wspace=0.04)
        left.suptitle(
            f"{METHOD_LABELS[methods[0]]} projections (grey = 0), activation", fontsize=8, y=0.9
        )
        right.suptitle(f"image patches (receptive field), {patch_label}", fontsize=8, y=0.9)
        for side, show_patch in ((left, False), (right, True)):
            axes = side.subplots(*grid, squeeze=False).flat
            for i, ax in enumerate(axes):
                ax.set_xticks([])
                ax.set_yticks([])
                if i >= len(res.units):
                    ax.set_axis_off()
                    continue
                u = res.units[i]
                if show_patch:
                    ax.imshow(_hwc(_crop(u.image, u.box)).numpy(), interpolation="nearest")
                    ax.set_xlabel(u.label, fontsize=7, labelpad=1)
                else:
                    crop = _signed_to_unit(_crop(u.projection, u.box))
                    ax.imshow(_hwc(crop).numpy(), interpolation="nearest")
                    ax.set_xlabel(f"{u.activation:.3g}", fontsize=7, labelpad=1)
            side.subplots_adjust(left=0.03, right=0.97, bottom=0.06, top=0.8, wspace=0.1,
                                 hspace=0.35)  # fmt: skip
    return _save(fig, path)


def _plot_methods(
    results: Sequence[ChannelProjections], path: str | Path, title: str, *, layer_label: str
) -> Path:
    """`plot_deconv` for several methods: per channel, a column per unit (its image patch,
    then a row per method)."""
    methods = results[0].methods
    per = max(len(r.units) for r in results)
    side = 1.0  # inches per panel
    width = per * side + 1.4  # and the row labels
    title = "\n".join(textwrap.fill(line, int(width * 11)) for line in title.split("\n"))
    block_height = (1 + len(methods)) * side + 0.9
    heights = [0.3 * (title.count("\n") + 1) + 0.3] + [block_height] * len(results)
    fig = _new_figure(width, sum(heights))
    rows = fig.subfigures(len(heights), 1, height_ratios=heights, squeeze=False)[:, 0]
    rows[0].text(0.5, 0.5, title, ha="center", va="center", fontsize=10)
    labels = ["image patch"] + [METHOD_LABELS[m] for m in methods]
    for block, res in zip(rows[1:], results, strict=True):
        h, w = res.map_size
        block.suptitle(
            f"{layer_label or res.layer}, channel {res.channel} ({h}x{w} map): its "
            f"{len(res.units)} strongest units (projections: grey = 0)",
            fontsize=10,
            y=0.99,
        )
        axes = block.subplots(len(labels), per, squeeze=False)
        for (i, j), ax in np.ndenumerate(axes):
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(labels[i], fontsize=8)
            if j >= len(res.units):
                ax.set_axis_off()
                continue
            u = res.units[j]
            if i == 0:
                ax.imshow(_hwc(_crop(u.image, u.box)).numpy(), interpolation="nearest")
                ax.set_title(f"{u.label}, {u.activation:.3g}", fontsize=7, pad=2)
            else:
                crop = _signed_to_unit(_crop(u.projections[methods[i - 1]], u.box))
                ax.imshow(_hwc(crop).numpy(), interpolation="nearest")
        block.subplots_adjust(left=1.2 / width, right=0.99, bottom=0.02,
                              top=1 - 0.7 / block_height, wspace=0.08, hspace=0.08)  # fmt: skip
    return _save(fig, path)


# -- training curves -------------------------------------------------------------------------


@dataclass(frozen=True)
class RunCurves:
    """The error curves of one run, in percent against iterations (optimizer steps)."""

    name: str
    train_steps: tuple[int, ...]
    train_error: tuple[float, ...]
    test_steps: tuple[int, ...]
    test_error: tuple[float, ...]
    test_split: str  # "test", or "val" where a run has no test evaluations


def read_run(run_dir: str | Path, name: str | None = None) -> RunCurves:
    """The curves of a run folder's `metrics.jsonl` (one JSON object per line).

    Reads `step`, `train_error` and `test_error` (or `val_error` where no line has a test
    error); missing or null fields are skipped, as is an unreadable line (the last line of an
    interrupted run, with a warning).

    Args:
        run_dir: a run folder written by `cnnlab train`, or its metrics.jsonl.
        name: the legend entry; default the folder's name.

    Raises:
        FileNotFoundError: no metrics.jsonl there.
        ValueError: it holds no error values.
    """
    path = Path(run_dir)
    file = path if path.is_file() else path / "metrics.jsonl"
    rows = [r for r in metrics_rows(file) if isinstance(r.get("step"), int | float)]

    def series(key: str) -> tuple[tuple[int, ...], tuple[float, ...]]:
        pts = [(int(r["step"]), float(r[key])) for r in rows if _is_number(r.get(key))]
        return tuple(s for s, _ in pts), tuple(v for _, v in pts)

    train = series("train_error")
    split = "test"
    test = series("test_error")
    if not test[0]:
        split, test = "val", series("val_error")
    if not train[0] and not test[0]:
        raise ValueError(f"{file}: no train_error, test_error or val_error values")
    label = name or (path.parent.name if path.is_file() else path.resolve().name)
    return RunCurves(label, train[0], train[1], test[0], test[1], split)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def plot_curves(runs: Sequence[RunCurves], path: str | Path, title: str = "") -> Path:
    """Training (dashed) and test (bold) error of several runs in one figure, as in the
    ResNet paper's Fig. 1 and Fig. 6.

    Args:
        runs: from `read_run`, one colour each.
        path: the PNG file to write.
        title: default "training (dashed) and test (bold) error".
    """
    return _save(curves_figure(runs, title), path)


def curves_figure(runs: Sequence[RunCurves], title: str = "") -> Figure:
    """The figure of `plot_curves`, not yet written."""
    if not runs:
        raise ValueError("no runs to plot")
    fig = _new_figure(7.0, 4.6)
    ax = fig.subplots()
    colors = _run_colors(len(runs))
    handles = []
    for run, color in zip(runs, colors, strict=True):
        if run.train_steps:
            ax.plot(run.train_steps, run.train_error, "--", color=color, linewidth=1.0)
        if run.test_steps:
            ax.plot(run.test_steps, run.test_error, "-", color=color, linewidth=2.4)
        suffix = " (val)" if run.test_split == "val" and run.test_steps else ""
        handles.append(Line2D([], [], color=color, linewidth=2.4, label=run.name + suffix))
    handles += [
        Line2D([], [], color="0.3", linestyle="--", linewidth=1.0, label="training error"),
        Line2D([], [], color="0.3", linestyle="-", linewidth=2.4, label="test error"),
    ]
    ax.legend(handles=handles, fontsize=8, loc="upper right")
    ax.set_xlabel("iterations")
    ax.set_ylabel("error (%)")
    ax.set_ylim(bottom=0)
    ax.set_xlim(left=0)
    ax.grid(True, alpha=0.3)
    ax.set_title(title or "training (dashed) and test (bold) error", fontsize=11)
    fig.tight_layout()
    return fig


# -- time to accuracy ---------------------------------------------------------------------------


def plot_time_to_accuracy(
    timelines: Sequence[Timeline], target: float, path: str | Path, title: str = ""
) -> Path:
    """Test error against training minutes (log scale) for several runs, the target error as a
    dotted line and a marker where each run first reached it; each run labelled with its
    machine, so runs on different machines compare by what they took.

    Args:
        timelines: from `time_to_accuracy.read_timeline`, one colour each; the seeds of one run
            on one machine (`time_to_accuracy.seed_groups`) share a colour and a label.
        target: the error (%) to reach.
        path: the PNG file to write.
        title: default "test error against training time".
    """
    return _save(time_to_accuracy_figure(timelines, target, title), path)


def time_to_accuracy_figure(
    timelines: Sequence[Timeline], target: float, title: str = ""
) -> Figure:
    """The figure of `plot_time_to_accuracy`, not yet written. The legend (one line per run or
    per run's seeds, long with the machine's name) stands beside the axes, never over the
    curves, and the figure grows taller with the number of entries so that it fits."""
    if not timelines:
        raise ValueError("no runs to plot")
    groups = seed_groups(timelines)
    fig = _new_figure(11.0, max(4.6, 1.0 + 0.17 * (len(groups) + 1)))
    ax = fig.subplots()
    for group, color in zip(groups, _run_colors(len(groups)), strict=True):
        for k, t in enumerate(group.members):
            minutes = [max(s, 1.0) / 60 for s in t.seconds]
            suffix = " (val)" if t.split == "val" else ""
            label = f"{group.label}{suffix}: {t.machine}" if k == 0 else None
            ax.plot(minutes, t.test_error, "-o", color=color, linewidth=2.0 if k == 0 else 1.4,
                    markersize=3, label=label)  # fmt: skip
            got = reached(t, target)
            if got:
                ax.plot([max(got.seconds, 1.0) / 60], [got.error], "*", color=color,
                        markersize=14, markeredgecolor="black", markeredgewidth=0.6)  # fmt: skip
    ax.axhline(target, color="0.3", linestyle=":", linewidth=1.2, label=f"target {target:g}%")
    ax.set_xscale("log")
    ax.set_xlabel("training time (minutes, log scale; evaluations left out)")
    ax.set_ylabel("test error (%)")
    top = max(max(t.test_error) for t in timelines)
    ax.set_ylim(bottom=max(0.0, target - 4), top=min(top, 3 * target) + 1)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    ax.set_title(title or "test error against training time (star: target first reached)",
                 fontsize=11)  # fmt: skip
    fig.tight_layout()  # makes room for the legend: it is part of the axes' extent
    return fig


# -- layer responses ---------------------------------------------------------------------------


def plot_responses(responses: Sequence[LayerResponses], path: str | Path, title: str = "") -> Path:
    """The std of each 3x3 layer's response for several runs, as the ResNet paper's Fig. 7:
    by layer index (top) and sorted in descending order (bottom).

    Args:
        responses: from `responses.run_responses`, one colour each; plain networks dashed.
        path: the PNG file to write.
        title: default "layer responses".
    """
    return _save(responses_figure(responses, title), path)


def responses_figure(responses: Sequence[LayerResponses], title: str = "") -> Figure:
    """The figure of `plot_responses`, not yet written."""
    if not responses:
        raise ValueError("no runs to plot")
    fig = _new_figure(7.0, 6.4)
    by_index, ranked = fig.subplots(2, 1)
    for r, color in zip(responses, _run_colors(len(responses)), strict=True):
        try:
            plain = model_card(r.model).family.startswith("plain")
        except UnknownModelError:  # drawn as a residual net
            plain = False
        style = {"color": color, "linestyle": "--" if plain else "-", "linewidth": 1.4}
        layers = range(1, len(r.std) + 1)
        by_index.plot(layers, r.std, label=r.name, **style)
        ranked.plot(layers, r.ranked(), label=r.name, **style)
    by_index.set_xlabel("layer index (original order)")
    ranked.set_xlabel("index (sorted by magnitude)")
    for ax in (by_index, ranked):
        ax.set_ylabel("std")
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    ranked.legend(fontsize=8, loc="upper right")  # sorted curves fall: that corner is free
    n = responses[0].images
    fig.suptitle(
        (title or "layer responses")
        + f"\nstd of each 3x3 layer's output after BN, before ReLU/addition, over {n:,} images",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


# -- the `cnnlab visualize` commands ---------------------------------------------------------


def _network_title(net_name: str, source: str) -> str:
    return f"{net_name} ({source})"


def draw_filters(checkpoint: str | Path, out: str | Path, *, weights: str | None = None) -> Path:
    """`cnnlab visualize filters`: the first conv layer's kernels of a checkpoint or model name
    (with `weights`, torchvision's published weights for it)."""
    net = load_network(checkpoint, weights)
    name, conv = first_conv(net.model)
    k = conv.kernel_size
    title = (
        f"{_network_title(net.name, net.source)}\nfirst layer {name}: {conv.out_channels} "
        f"kernels {k[0]}x{k[1]}x{conv.in_channels}"
    )
    return plot_filters(kernel_images(conv), out, title)


def draw_activations(
    checkpoint: str | Path,
    image: str | Path,
    out: str | Path,
    *,
    channels: int = 8,
    layers: Sequence[str] | None = None,
    weights: str | None = None,
) -> Path:
    """`cnnlab visualize activations`: the maps of each stage for one image file (with
    `weights`, of torchvision's published weights for a model name, the image resized and
    centre-cropped as their transforms do)."""
    net = load_network(checkpoint, weights)
    pixels = net.prepare(load_image(image)[None])
    x = net.normalize(pixels)
    if layers:
        layers = [resolve_layer(net.model, name, net.image_size[0]) for name in layers]
    outputs = stage_outputs(net.model, x, layers)
    caption = ""
    if net.classes is not None:
        with torch.no_grad():
            probs = net.model(x).float().softmax(dim=1)[0]
        p, i = probs.max(dim=0)
        caption = f"predicted: {net.classes[int(i)]} ({100 * float(p):.0f}%)"
    title = f"{_network_title(net.name, net.source)}: activations for {Path(image).name}"
    for note in net.notes:
        title += f"\n{note}"
    names = describe_layers(net.model, list(outputs), net.image_size[0])
    maps = {names[name]: t[0] for name, t in outputs.items()}
    return plot_activations(pixels[0], maps, out, title, channels=channels, caption=caption)


def draw_deconv(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    layer: str,
    channels: Sequence[int] | None = None,
    split: str = "test",
    limit: int | None = 2000,
    top: int = 9,
    weights: str | None = None,
    images: Sequence[str | Path] | None = None,
    methods: Sequence[str] = ("deconvnet",),
) -> Path:
    """`cnnlab visualize deconv`: Zeiler and Fergus's Fig. 2 for some channels of a layer.

    Searches `limit` images of the split (spread evenly over it) for each channel's `top`
    activations, then projects each back to pixel space by each of `methods` ("deconvnet",
    "guided", "saliency"; several: side by side). With `images` (image files or folders of
    them, any sizes), searches those instead of `data`: each is prepared on its own as the
    network takes it (`Network.prepare`; with `weights`, resized and centre-cropped as
    torchvision's transforms for them do) and labelled by its file name.
    """
    from cnnlab.data import DataError, load_dataset

    methods = tuple(check_method(m) for m in methods)
    net = load_network(checkpoint, weights)
    if images:
        return _deconv_photos(
            net, images, out, layer=layer, channels=channels, top=top, methods=methods
        )
    try:
        dataset = load_dataset(data, split)
    except DataError as e:  # a user's error: one line from the command line
        raise ValueError(str(e)) from None
    index = spread_subset(len(dataset), limit)
    if net.classes is not None and tuple(dataset.classes) != tuple(net.classes):
        warnings.warn(
            f"the data's classes differ from the {len(net.classes)} the network was trained on",
            stacklevel=2,
        )
    path = resolve_layer(net.model, layer, net.image_size[0])
    results = deconv_top_images(
        net,
        dataset.images[index],
        dataset.labels[index],
        dataset.classes,
        path,
        channels,
        top=top,
        methods=methods,
    )
    what = f"top {top} of {len(index):,} {Path(str(data)).name} {split} images per channel"
    return plot_deconv(
        results,
        out,
        _deconv_title(net, what, channels, methods),
        layer_label=_layer_label(layer, path),
    )


def _deconv_photos(
    net: Network,
    images: Sequence[str | Path],
    out: str | Path,
    *,
    layer: str,
    channels: Sequence[int] | None,
    top: int,
    methods: Sequence[str],
) -> Path:
    photos, names = load_images(images)
    pixels = torch.stack([net.prepare(photo[None])[0] for photo in photos])
    path = resolve_layer(net.model, layer, net.image_size[0])
    results = deconv_top_images(
        net, pixels, torch.arange(len(names)), names, path, channels, top=top, prepared=True,
        methods=methods,
    )  # fmt: skip
    what = f"top {min(top, len(names))} of {len(names)} given images per channel"
    title = _deconv_title(net, what, channels, methods)
    return plot_deconv(
        results, out, title, layer_label=_layer_label(layer, path), patch_label="file"
    )


def _layer_label(layer: str, path: str) -> str:
    return layer if layer == path else f"{layer} ({path})"


def _deconv_title(
    net: Network, what: str, channels: Sequence[int] | None, methods: Sequence[str]
) -> str:
    how = "; ".join(METHOD_TITLES[m] for m in methods)
    title = f"{_network_title(net.name, net.source)}\n{how}: {what}"
    if channels is None:
        title += "\nthe channels with the largest activations"
    for note in net.notes:
        title += f"\n{note}"
    return title


def draw_curves(run_dirs: Sequence[str | Path], out: str | Path, title: str = "") -> Path:
    """`cnnlab visualize curves`: training and test error of several run folders."""
    if not run_dirs:
        raise ValueError("name at least one run folder")
    return plot_curves([read_run(d) for d in run_dirs], out, title)


def draw_time_to_accuracy(
    run_dirs: Sequence[str | Path], target: float, out: str | Path, title: str = ""
) -> tuple[Path, list[Timeline]]:
    """`cnnlab visualize time-to-accuracy`: the figure of several run folders, and their
    timelines (for `time_to_accuracy.time_to_accuracy_table`)."""
    if not run_dirs:
        raise ValueError("name at least one run folder")
    timelines = [read_timeline(d) for d in run_dirs]
    return plot_time_to_accuracy(timelines, target, out, title), timelines


def draw_responses(
    runs: Sequence[str | Path],
    data: str | Path,
    out: str | Path,
    *,
    split: str = "test",
    limit: int | None = RESPONSE_IMAGES,
    title: str = "",
) -> Path:
    """`cnnlab visualize responses`: He et al. 2015's Fig. 7 for run folders (or checkpoints):
    the std of each 3x3 layer's response over `limit` images of the split (spread evenly
    over it), each run named by its config.json's model and options."""
    from cnnlab.data import DataError, load_dataset

    if not runs:
        raise ValueError("name at least one run folder")
    try:
        dataset = load_dataset(data, split)
    except DataError as e:  # a user's error: one line from the command line
        raise ValueError(str(e)) from None
    images = dataset.images[spread_subset(len(dataset), limit)]
    responses = run_responses(runs, images)
    title = title or f"layer responses on {Path(str(data)).name} {split} images"
    return plot_responses(responses, out, title)
