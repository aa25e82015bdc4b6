"""The training loop: get a batch, step, and the bookkeeping around the step.

Speed lives in the data path and the step, not in the model. Small images (CIFAR) sit on the
device as one uint8 tensor and each step indexes a batch and crops and flips it as a batch;
large ones (ImageNet folders) are streamed by DataLoader workers that decode and crop them
while the step runs (batches.py). The step (step.py) normalises the batch, runs forward, loss,
backward and the optimizer update in the precision and layout chosen for the hardware
(hardware.py), as a CUDA graph on a GPU. The loop never branches on the device; its schedule,
logging, evaluations and checkpoints stay outside the step.

The precision ("auto" by default) is resolved once when a run starts, printed in one line with
its reason and recorded in config.json and the checkpoints; a resumed run keeps it. With a
time budget (`time_minutes`) the run first measures its step here and fixes its length so that
it ends in about that time (timing.py).

Every random choice of step t is derived from (seed, t) alone: the order of epoch e is a
permutation drawn from a generator seeded with (seed, e), the crops and flips (and cutout
squares) of step t from a generator seeded with (seed, t) (with `flip="alternate"`, the flips
from the epoch's parity and one bit per image drawn from the seed; streamed images from a
generator per image of the step, batches.py), and the global torch seed
is reset to (seed, t) before the step for dropout. A checkpoint therefore needs only the
weights, the optimizer state, the step counter and the slow-start state, and a run killed at
any point and resumed ends, on the CPU, with bitwise the same weights as an uninterrupted run
(tests/test_train.py).

Model selection uses the validation split when one is given (the paper's 45k/5k, section
4.2): `best.pt` is the checkpoint of lowest validation error. The test split is evaluated and
recorded but never used to choose anything.

The loss is summed on the device and synced every `log_every` steps; a NaN or infinite loss
then stops the run with TrainingDiverged before anything more is written, so checkpoint.pt
stays the last good one.

The run folder (`out`):
    config.json     recipe, model and options, seed, data, versions, command line, machine
    metrics.jsonl   a JSON line per log point: step, epoch, lr, train loss and error,
                    val/test top-1 and top-5 error (at evaluations, else null), images/s,
                    elapsed_s (wall clock of the loop, resumes included) and train_s
                    (without evaluations and checkpoints); errors in percent
    checkpoint.pt   the latest checkpoint (see checkpoint.py)
    best.pt         the checkpoint of lowest validation error, when there is a validation split

Several processes (torchrun): each computes its share of every global batch; see
distributed.py.
"""

from __future__ import annotations

import copy
import gc
import json
import math
import os
import platform
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

import cnnlab
from cnnlab.data import ArrayDataset, Normalize
from cnnlab.data.augment import CenterCrop, TrainCrop, pca_colour
from cnnlab.data.stream import ImageStream, StreamDataset
from cnnlab.models.registry import create_model, model_card
from cnnlab.models.resnet import zero_init_residual
from cnnlab.train import timing
from cnnlab.train.averaging import Lookahead, WeightAverage
from cnnlab.train.batches import MemoryBatches, StreamBatches, seed_of
from cnnlab.train.checkpoint import CheckpointError, atomic_write, load_checkpoint, save_checkpoint
from cnnlab.train.distributed import (
    DistEnv,
    all_reduce_sum,
    broadcast_buffers,
    init_from_env,
    resolve_device,
)
from cnnlab.train.evaluate import EvalResult, evaluate
from cnnlab.train.hardware import Arithmetic, choose_arithmetic, machine_info
from cnnlab.train.recipes import Recipe, describe_differences
from cnnlab.train.schedules import Plateau, SlowStart, learning_rate
from cnnlab.train.step import TrainStep
from cnnlab.train.whitening import whiten_first_conv

__all__ = ["TrainResult", "TrainingDiverged", "train"]

Data = ArrayDataset | ImageStream
# Streamed data: the normalisation statistics and the colour PCA come from the centre crops
# of this many training images, spread evenly over the split (ImageNet: 1 in 1,281).
STATS_IMAGES = 1000


class TrainingDiverged(Exception):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    """What a call to `train` did. Errors are in percent."""

    model: nn.Module  # the network after the last step, in eval mode
    steps: int  # optimizer steps done so far, counting those before a resume
    completed: bool  # False when stopped early by `stop_after`
    # The step at whose log point the training error reached `until_train_error`, where the
    # run ended (completed); None when it did not, or none was asked for.
    reached_step: int | None = None
    test_error: float | None = None  # of the final weights
    test_top5_error: float | None = None
    val_error: float | None = None  # of the final weights
    best_val_error: float | None = None  # of best.pt (lowest validation error)
    best_test_error: float | None = None  # test error of best.pt
    run_dir: Path | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)


def train(
    model: str,
    train_data: Data,
    recipe: Recipe,
    *,
    out: str | Path | None = None,
    val_data: Data | None = None,
    test_data: Data | None = None,
    model_options: Mapping[str, object] | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    compile: bool = False,
    resume: bool = False,
    eval_every: int | None = None,
    checkpoint_every: int | None = None,
    log_every: int = 50,
    stop_after: int | None = None,
    until_train_error: float | None = None,
    time_minutes: float | None = None,
    progress: bool = True,
    info: Mapping[str, object] | None = None,
    workers: int | None = None,
) -> TrainResult:
    """Train a registered network with a recipe, on in-memory or streamed images.

    Args:
        model: a registered model name; built with `num_classes=len(train_data.classes)`.
        train_data: the training images: an ArrayDataset (uint8, moved to `device` whole,
            trained at its own size) or an ImageStream (read by `workers` processes, cropped
            to the model's input size as the recipe's `crop` says).
        recipe: optimizer, schedule, precision ("auto": by the hardware); see recipes.py.
        out: the run folder (config.json, metrics.jsonl, checkpoint.pt, best.pt). None: no
            files are written and `resume` is not possible.
        val_data: held-out images for model selection (best.pt), e.g. the 5k of 45k/5k.
        test_data: evaluated and recorded, never used to choose anything.
        model_options: builder options, e.g. {"shortcut": "B"}.
        seed: the weights' initialisation and every random choice of the run derive from it.
        device: "cpu", "cuda", "cuda:1"; None: the GPU if there is one.
        compile: run the training step's forward through torch.compile.
        resume: continue the run in `out` from its checkpoint.pt.
        eval_every: evaluate val/test data every this many steps (default: at most once an
            epoch and at most 10 times a run; always after the last step).
        checkpoint_every: write checkpoint.pt every this many steps (default: every epoch
            and at each evaluation).
        log_every: sync, check the loss and write a metrics line every this many steps.
        stop_after: stop before this step without writing anything more, as a killed run
            would (for tests of resume, and for time-boxed jobs that resume later).
        until_train_error: end the run at the first log point whose training error (percent,
            over the steps since the previous log point) is at or below this, as after its
            last step: held-out data evaluated, checkpoint written, the run completed there
            (`TrainResult.reached_step`). Resuming a run that ended so trains nothing more.
            For the time-to-error race of Krizhevsky et al. 2012, Fig. 1 (experiments).
        time_minutes: size the run to end in about this many minutes of training and
            evaluation on this machine (replaces the recipe's steps; see timing.py).
        progress: show a progress bar (process 0 only).
        info: extra entries for config.json (the command line, the data's source and split).
        workers: DataLoader processes for streamed data (default: the CPU count, at most 8).

    Raises:
        TrainingDiverged: the loss became NaN or infinite; checkpoint.pt is the last good one.
        CheckpointError: `resume` without a usable checkpoint, or one of another model.
        ValueError: options out of range, a run folder that already holds a run, a model that
            does not take the data's image size.
    """
    dev = resolve_device(None if device is None else str(device))  # "cuda" -> cuda:LOCAL_RANK
    if dev.type == "cuda":
        torch.cuda.set_device(dev)  # before joining an nccl process group
    env = init_from_env(dev)
    try:
        return _train(
            model, train_data, recipe, out=None if out is None else Path(out),
            val_data=val_data, test_data=test_data, options=dict(model_options or {}),
            seed=seed, device=dev, env=env, compile=compile, resume=resume,
            eval_every=eval_every, checkpoint_every=checkpoint_every, log_every=log_every,
            stop_after=stop_after, until_train_error=until_train_error,
            time_minutes=time_minutes, progress=progress, info=dict(info or {}),
            workers=default_workers() if workers is None else workers,
        )  # fmt: skip
    except BaseException as e:
        if env.distributed:  # the frames' locals would keep the DDP wrapper alive; see below
            traceback.clear_frames(e.__traceback__)
        raise
    finally:
        if env.distributed:
            # DDP's reference cycles hold the process group: free them before it is destroyed,
            # else gloo's threads die at interpreter exit and abort the process (SIGABRT).
            gc.collect()
        env.shutdown()


def _train(
    model_name: str,
    train_data: Data,
    recipe: Recipe,
    *,
    out: Path | None,
    val_data: Data | None,
    test_data: Data | None,
    options: dict[str, object],
    seed: int,
    device: torch.device,
    env: DistEnv,
    compile: bool,
    resume: bool,
    eval_every: int | None,
    checkpoint_every: int | None,
    log_every: int,
    stop_after: int | None,
    until_train_error: float | None,
    time_minutes: float | None,
    progress: bool,
    info: dict[str, object],
    workers: int,
) -> TrainResult:
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if until_train_error is not None and not 0 <= until_train_error <= 100:
        raise ValueError(f"until_train_error is a percentage, got {until_train_error}")
    timing.check_minutes(time_minutes)
    n_train = len(train_data)
    batch = recipe.batch_size
    if batch % env.world_size:
        raise ValueError(
            f"batch size {batch} does not split evenly over {env.world_size} processes"
        )
    local = batch // env.world_size  # this process's share of every global batch
    steps_per_epoch = n_train // batch  # the last incomplete batch of an epoch is dropped
    if steps_per_epoch < 1:
        raise ValueError(f"batch size {batch} is larger than the training set ({n_train} images)")
    if min(eval_every or 1, checkpoint_every or 1, log_every) < 1:
        raise ValueError("eval_every, checkpoint_every and log_every must be at least 1")
    ckpt_path = best_path = metrics_path = None
    if out is not None:
        ckpt_path, best_path = out / "checkpoint.pt", out / "best.pt"
        metrics_path = out / "metrics.jsonl"
        resume = check_run_folder(out, resume, create=False)
    elif resume:
        raise ValueError("resume needs the run folder (--out) that holds the checkpoint")
    state = None
    if resume:
        assert ckpt_path is not None
        state = load_checkpoint(ckpt_path, model=model_name)
        if time_minutes is not None:  # sized when it started: keep its length
            recipe = recipe.with_steps(int(state["recipe"]["steps"]))
    # A resumed run keeps the arithmetic it started with, wherever it resumes.
    saved = state.get("arithmetic") if state is not None else None
    if saved is not None and recipe.precision == "auto":
        arithmetic = Arithmetic(**saved)
    else:
        arithmetic = choose_arithmetic(device, recipe.precision, recipe.channels_last)

    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    streamed = isinstance(train_data, ImageStream)
    if streamed:
        if recipe.augment and recipe.crop == "pad":
            raise ValueError(
                f"recipe {recipe.name} pads and crops small in-memory images (crop='pad'); "
                "streamed image folders need one of the ImageNet papers' crops: a recipe such "
                "as resnet2015, or -R crop=scale|square|area"
            )
        if recipe.clean_final:
            raise ValueError(
                f"clean_final={recipe.clean_final} is for in-memory images (the CIFAR path); "
                "streamed image folders are cropped throughout: leave it at 0"
            )
        size = model_card(model_name).input_size
        eval_crop = CenterCrop(recipe.test_resize, size)
        stats = _stats_sample(train_data, eval_crop)  # centre crops of STATS_IMAGES images
        val_data, test_data = (
            StreamDataset(d, eval_crop) if isinstance(d, ImageStream) else d
            for d in (val_data, test_data)
        )
    else:
        stats = train_data
    image_shape = list(stats.images.shape[1:])
    # Normalisation statistics come from the training images only (not val, not test).
    normalize = Normalize.fit(stats.images, recipe.normalize).to(device)
    normalize.std.clamp_(min=1 / 255)  # a constant channel: leave it unscaled, not infinite
    mean = normalize.mean[0]  # C x H x W for a per-pixel mean, C x 1 x 1 per channel
    mean = (mean.flatten() if mean.shape[1:] == (1, 1) else mean).tolist()
    std = normalize.std.flatten().tolist()
    torch.manual_seed(seed)
    net = create_model(model_name, num_classes=len(train_data.classes), **options)
    _check_input_size(net, model_name, image_shape)
    if recipe.zero_init_residual:
        zero_init_residual(net)
    if recipe.whiten_init:  # from the images as the step normalises them, on the CPU
        whiten_first_conv(net, stats.images.cpu(), copy.deepcopy(normalize).cpu())
    if recipe.bn_momentum is not None:
        for module in net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = recipe.bn_momentum
    memory_format = arithmetic.memory_format
    net = net.to(device, memory_format=memory_format)

    def make_step(network: nn.Module, distributed: bool) -> TrainStep:
        return TrainStep(network, recipe, arithmetic, normalize, device,
                         distributed=distributed, compile=compile)  # fmt: skip

    sizing = None
    if time_minutes is not None and state is None:
        held = [d for d in (val_data, test_data) if d is not None]
        sizing = _size_run(time_minutes, make_step, net, stats, local, held,
                           normalize, arithmetic, device, env, steps_per_epoch)  # fmt: skip
        recipe = recipe.with_steps(sizing.steps)
    total = recipe.steps
    if recipe.schedule == "plateau" and val_data is None:
        raise ValueError(
            f"recipe {recipe.name} divides its learning rate when the validation error stops "
            "falling: it needs validation images (--split 45k, or a val/ folder beside train/)"
        )
    if eval_every is None and recipe.schedule == "plateau":
        eval_every = steps_per_epoch  # the papers watch the validation error every epoch
    eval_every = eval_every or timing.eval_interval(total, steps_per_epoch)
    checkpoint_every = checkpoint_every or min(eval_every, steps_per_epoch)
    train_step = make_step(net, env.distributed)
    slow_start = SlowStart.for_model(recipe, model_name)
    plateau = Plateau()
    # With a weight average, the averaged network is the one evaluated and saved as the model;
    # the trained weights travel in the checkpoint beside it, for resuming.
    average = WeightAverage(net, recipe.ema) if recipe.ema else None
    eval_net = average.net if average is not None else net
    lookahead = (
        Lookahead(net, recipe.lookahead_steps, recipe.lookahead_alpha)
        if recipe.lookahead_steps
        else None
    )
    start, best_val, clock = 0, None, {"elapsed_s": 0.0, "train_s": 0.0}
    if state is not None:
        assert ckpt_path is not None
        _check_same_run(state, options, recipe, seed, ckpt_path)
        net.load_state_dict(state.get("trained_state", state["model_state"]))
        if average is not None:
            average.load_state_dict(state["model_state"])
        if lookahead is not None:
            lookahead.load_state_dict(state["lookahead"])
        train_step.load_optimizer_state(state["optimizer"])
        slow_start.load_state_dict(state["slow_start"])
        if "plateau" in state:
            plateau.load_state_dict(state["plateau"])
        start, best_val = int(state["step"]), state["best_val_error"]
        clock = {k: float(state[k]) for k in clock}
    # A run that ended at `until_train_error` saved that log point's metrics: nothing to train.
    reached = None
    if state is not None and _reached(state.get("metrics"), until_train_error):
        reached = start
    # Nothing is written before this point, so a bad option or checkpoint leaves no trace.
    if out is not None:
        if env.is_main:
            out.mkdir(parents=True, exist_ok=True)
        _barrier(env)  # every process has looked at the folder before process 0 writes to it
    if resume and env.is_main:
        assert out is not None and metrics_path is not None
        _truncate_metrics(metrics_path, start)
        _record_resume(out, start)
    elif out is not None and env.is_main:
        assert metrics_path is not None
        metrics_path.unlink(missing_ok=True)  # of a run killed before its first checkpoint
        config = _config(model_name, options, recipe, seed, train_data, val_data, test_data,
                         image_shape, device, env, compile, info)  # fmt: skip
        if streamed:
            config["data_mode"] = {"mode": "stream", "workers": workers}
        config["arithmetic"] = arithmetic.to_dict()
        config["step"] = train_step.describe()
        if sizing is not None:
            config["time_budget"] = sizing.to_dict()
        atomic_write(out / "config.json", lambda f: f.write(_json(config).encode() + b"\n"))

    meta = {
        "model": model_name, "model_options": options, "num_classes": len(train_data.classes),
        "classes": list(train_data.classes), "image_shape": image_shape,
        "mean": mean, "std": std, "recipe": recipe.to_dict(), "seed": seed,
        "arithmetic": arithmetic.to_dict(),
    }  # fmt: skip
    if streamed:  # how predict and eval prepare an image for this network
        meta["preprocess"] = {"resize": recipe.test_resize, "crop": image_shape[-1]}

    def save(path: Path, step: int, metrics: dict[str, Any]) -> None:
        # Every process checks (the weights are the same on all), so all stop together.
        if not all(bool(torch.isfinite(p).all()) for p in net.parameters()):
            bar.close()
            raise TrainingDiverged(
                f"training diverged: the weights are not finite at step {step}; the last good "
                f"checkpoint is kept. Try a lower --lr (this run's peak lr is {recipe.lr})"
            )
        if not env.is_main:
            return
        beside: dict[str, Any] = {}  # what resuming needs besides the model's weights
        if average is not None:
            beside["trained_state"] = net.state_dict()
        if lookahead is not None:
            beside["lookahead"] = lookahead.state_dict()
        save_checkpoint(path, {
            **meta, "model_state": eval_net.state_dict(), **beside,
            "optimizer": train_step.optimizer.state_dict(),
            "step": step, "slow_start": slow_start.state_dict(), "best_val_error": best_val,
            "plateau": plateau.state_dict(),
            "elapsed_s": clock["elapsed_s"], "train_s": clock["train_s"], "metrics": metrics,
        })  # fmt: skip

    held_out = {"val": val_data, "test": test_data}
    if isinstance(train_data, ImageStream):
        crop = _train_crop(recipe, image_shape[-1], stats) if recipe.augment else eval_crop
        batches: MemoryBatches | StreamBatches = StreamBatches(
            train_data, crop, recipe, seed, device, env, workers=workers, total=total
        )
    else:
        batches = MemoryBatches(train_data, recipe, seed, device, env)

    def evaluate_all() -> dict[str, EvalResult]:
        how = {"device": device, "precision": arithmetic.precision, "memory_format": memory_format}
        return {
            name: evaluate(eval_net, data, normalize, env=env, workers=workers, **how)  # type: ignore[arg-type]
            for name, data in held_out.items()
            if data is not None
        }

    verbose = progress and env.is_main
    if verbose:
        print(f"{arithmetic.reason}; {train_step.describe()}", flush=True)
    bar = _progress_bar(total, start, enabled=verbose)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss * n, wrong, n
    rows: list[dict[str, Any]] = []
    t_start = t_mark = time.perf_counter()
    elapsed_before, last_log, lr = clock["elapsed_s"], start, 0.0
    net.train()
    for step in range(start, total):
        if reached is not None or (stop_after is not None and step >= stop_after):
            break
        lr = learning_rate(recipe, step, slow_start, plateau)
        torch.manual_seed(seed_of(seed, "step", step))  # dropout
        x, y = batches.get(step)
        loss, wrong = train_step(x, y, lr)
        if lookahead is not None:
            lookahead.update(net, step)
        if average is not None:
            average.update(net, step)
        sums[0] += loss * local
        sums[1] += wrong
        sums[2] += local
        if slow_start.active:  # needs this step's error on every process now: a sync point
            batch_wrong = all_reduce_sum(wrong.double().reshape(1), env).item()
            slow_start.update(batch_wrong / batch, recipe)
        bar.update(1)

        done = step + 1
        is_eval = done % eval_every == 0 or done == total
        is_ckpt = done % checkpoint_every == 0 or is_eval
        if not (done % log_every == 0 or is_eval or is_ckpt):
            continue
        loss_sum, wrong_sum, count = all_reduce_sum(sums, env).tolist()  # sync point
        sums.zero_()
        if not math.isfinite(loss_sum):
            bar.close()
            raise TrainingDiverged(
                f"training diverged: the loss became {loss_sum / count} between steps "
                f"{last_log} and {done}; {_last_good(ckpt_path)}. "
                f"Try a lower --lr (this run's peak lr is {recipe.lr})"
            )
        # Training time runs from the end of the last log point to this sync, which waits for
        # the device; evaluations and checkpoints count in elapsed_s only.
        now = time.perf_counter()
        clock["train_s"] += now - t_mark
        if is_eval or is_ckpt:
            broadcast_buffers(eval_net, env)  # evaluate and save process 0's BN statistics
        row: dict[str, Any] = {
            "step": done, "epoch": round(done / steps_per_epoch, 4), "lr": lr,
            "train_loss": loss_sum / count, "train_error": 100.0 * wrong_sum / count,
            "val_error": None, "test_error": None, "val_top5_error": None, "test_top5_error": None,
            "images_per_s": (done - last_log) * batch / max(now - t_mark, 1e-9),
            "elapsed_s": None, "train_s": round(clock["train_s"], 3),
        }  # fmt: skip
        if _reached(row, until_train_error):
            reached = done  # the run ends here, as after its last step: evaluated and saved
            is_eval = is_ckpt = True
        results = evaluate_all() if is_eval else {}
        for name, result in results.items():
            row[f"{name}_error"] = result.top1_error
            row[f"{name}_top5_error"] = result.top5_error
        clock["elapsed_s"] = elapsed_before + time.perf_counter() - t_start
        row["elapsed_s"] = round(clock["elapsed_s"], 3)
        rows.append(row)  # on every process: all hold the same, all-reduced numbers
        if env.is_main:
            # The metrics line goes first: after a kill, resuming drops lines past the checkpoint.
            if metrics_path is not None:
                with metrics_path.open("a") as f:
                    f.write(_json(row) + "\n")
            bar.set_postfix_str(_postfix(row), refresh=False)
            if is_eval and verbose:
                bar.write(_summary_line(row, total))
        if "val" in results and plateau.update(results["val"].top1_error, recipe) and verbose:
            bar.write(f"validation error stopped falling: lr divided ({plateau.reductions}x)")
        if "val" in results and (best_val is None or results["val"].top1_error < best_val):
            best_val = results["val"].top1_error  # model selection: validation error only
            if best_path is not None:
                save(best_path, done, row)
        if is_ckpt and ckpt_path is not None:
            save(ckpt_path, done, row)
        t_mark, last_log = time.perf_counter(), done
    bar.close()
    batches.close()

    net.eval()
    end = total if reached is None else reached  # the step the run ends at
    steps_done = reached if reached is not None else step_reached(start, total, stop_after)
    result = TrainResult(model=eval_net, steps=steps_done, completed=False, run_dir=out,
                         metrics=rows, best_val_error=best_val, reached_step=reached)  # fmt: skip
    result.completed = result.steps == end
    if not result.completed:
        return result
    if rows and rows[-1]["step"] == end:
        final = rows[-1]
    else:  # resumed a run that had already finished: evaluate its final weights again
        final = {f"{k}_{m}": v for k, r in evaluate_all().items()
                 for m, v in (("error", r.top1_error), ("top5_error", r.top5_error))}  # fmt: skip
    result.test_error = final.get("test_error")
    result.test_top5_error = final.get("test_top5_error")
    result.val_error = final.get("val_error")
    if test_data is not None and best_path is not None and best_path.exists():
        _barrier(env)  # process 0 may still be writing best.pt
        best = load_checkpoint(best_path, model=model_name)
        if best["step"] == end:
            result.best_test_error = result.test_error
        else:
            best_net = create_model(model_name, num_classes=len(train_data.classes), **options)
            best_net.load_state_dict(best["model_state"])
            best_net.to(device, memory_format=memory_format)
            result.best_test_error = evaluate(
                best_net, test_data, normalize, device=device, env=env, workers=workers,
                precision=arithmetic.precision, memory_format=memory_format,
            ).top1_error  # fmt: skip
    if verbose:
        _print_final(result, out, until_train_error)
    return result


def _size_run(
    minutes: float,
    make_step: Callable[[nn.Module, bool], TrainStep],
    net: nn.Module,
    sample: ArrayDataset,
    local: int,
    held_out: list[ArrayDataset | StreamDataset],
    normalize: Normalize,
    arithmetic: Arithmetic,
    device: torch.device,
    env: DistEnv,
    steps_per_epoch: int,
) -> timing.Sizing:
    """Measure a step and an evaluation here; the steps that fit in `minutes` (timing.py).

    A copy of the network trains for the measurement, so the run itself starts untouched. The
    copy trains alone in each process (no DDP: processes may time different numbers of steps,
    which gradient all-reduces would deadlock on), and process 0's figure is used by all.
    Streamed data is timed on its statistics sample, in memory: the step, not the loaders.
    """
    probe = make_step(copy.deepcopy(net), False)
    images, labels = sample.images.to(device), sample.labels.to(device)
    n = len(images)

    def step(i: int) -> torch.Tensor:
        idx = torch.arange(i * local, (i + 1) * local, device=device) % n
        return probe(images[idx], labels[idx], 0.0)[0]

    step_s = timing.measure(step, sync=lambda loss: loss.item())
    eval_image_s, eval_images = 0.0, sum(len(d) for d in held_out)
    if held_out:
        first = held_out[0]
        sample = (
            first.subset(torch.arange(min(len(first), 500)))
            if isinstance(first, ArrayDataset)
            else sample.subset(torch.arange(min(len(sample), 500)))
        )
        how = {"device": device, "precision": arithmetic.precision,
               "memory_format": arithmetic.memory_format}  # fmt: skip
        evaluate(probe.net, sample, normalize, **how)  # type: ignore[arg-type]  # warm-up
        start = timing.clock()
        evaluate(probe.net, sample, normalize, **how)  # type: ignore[arg-type]
        eval_image_s = (timing.clock() - start) / len(sample)
    steps = timing.steps_for_time(60 * minutes, step_s, eval_image_s * eval_images, steps_per_epoch)
    if env.distributed:
        steps = int(all_reduce_sum(torch.tensor([steps * env.is_main], device=device), env))
    return timing.Sizing(minutes, round(step_s, 6), round(eval_image_s, 9), steps)


def default_workers() -> int:
    """DataLoader processes for streamed data: one per CPU, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def _stats_sample(stream: ImageStream, crop: CenterCrop) -> ArrayDataset:
    """Centre crops of up to STATS_IMAGES training images, spread evenly: for the statistics."""
    n = len(stream)
    index = sorted({i * n // STATS_IMAGES for i in range(min(n, STATS_IMAGES))})
    images = torch.stack([crop(stream.read(i)) for i in index])
    return ArrayDataset(images, stream.labels[index], stream.classes)


def _train_crop(recipe: Recipe, size: int, stats: ArrayDataset) -> TrainCrop:
    eigval, eigvec = pca_colour(stats.images) if recipe.lighting else (None, None)
    return TrainCrop(
        size, recipe.crop, scale=recipe.scale_range, flip=True, lighting=recipe.lighting,
        eigval=tuple(eigval.tolist()) if eigval is not None else (),
        eigvec=tuple(map(tuple, eigvec.tolist())) if eigvec is not None else (),
    )  # fmt: skip


def _reached(row: Mapping[str, Any] | None, until_train_error: float | None) -> bool:
    """Whether a metrics row's training error is at or below `until_train_error` (percent)."""
    if until_train_error is None or not row or row.get("train_error") is None:
        return False
    return float(row["train_error"]) <= until_train_error


def step_reached(start: int, total: int, stop_after: int | None) -> int:
    """The step counter after a call that started at `start` (for `stop_after`)."""
    if stop_after is None:
        return total
    return min(total, max(start, stop_after))


def _barrier(env: DistEnv) -> None:
    if env.distributed:
        torch.distributed.barrier()


RUN_FILES = ("checkpoint.pt", "config.json", "metrics.jsonl")


def run_started(folder: Path) -> bool:
    """Whether a run was started in `folder`: any of its checkpoint, config or metrics exists.

    A run killed before its first checkpoint is started too (config.json is written first);
    `cnnlab train --resume` starts it afresh.
    """
    return any((folder / name).exists() for name in RUN_FILES)


def check_run_folder(out: Path, resume: bool, create: bool = True) -> bool:
    """Refuse to overwrite a run, or to resume nothing. True when resuming from a checkpoint.

    Raises:
        ValueError: `out` holds a run and `resume` is False, or `out` is a file.
        CheckpointError: `resume` and `out` holds no run.
    """
    ckpt_path = out / "checkpoint.pt"
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for the run")
    started = run_started(out)
    if resume:
        if not started:
            raise CheckpointError(
                f"nothing to resume: {out} holds no run; drop --resume to start a new run there"
            )
        return ckpt_path.exists()
    if started:
        raise ValueError(
            f"{out} already holds a run; pass --resume to continue it, or choose another --out"
        )
    if create:
        out.mkdir(parents=True, exist_ok=True)
    return False


def _check_input_size(net: nn.Module, name: str, image_shape: list[int]) -> None:
    """A clear error when the model does not take the data's image size.

    In-memory models run at the data's own resolution (no resizing): the CIFAR networks at
    32x32; the ImageNet networks only where their layers allow it.
    """
    channels, height, width = image_shape
    side = model_card(name).input_size
    if (height, width) == (side, side):
        return
    was_training = net.training
    net.eval()
    x = torch.zeros(2, channels, height, width)
    try:
        with torch.no_grad():
            net.forward_with_aux(x) if hasattr(net, "forward_with_aux") else net(x)
    except RuntimeError as e:
        raise ValueError(
            f"{name} does not run on the data's {height}x{width} images (its paper input is "
            f"{side}x{side}): {str(e).strip().splitlines()[0]}. cnnlab trains at the data's "
            "own size; use a CIFAR network (e.g. resnet20) for 32x32 data"
        ) from None
    finally:
        net.train(was_training)
    warnings.warn(
        f"{name} was designed for {side}x{side} inputs; training it on {height}x{width} images "
        "as they are",
        stacklevel=3,
    )


def _check_same_run(
    state: Mapping[str, Any], options: dict[str, object], recipe: Recipe, seed: int, path: Path
) -> None:
    """Resuming continues the same run: same model options, recipe and seed."""
    if dict(state["model_options"]) != options:
        raise CheckpointError(
            f"{path} is of {state['model']} with options {dict(state['model_options'])}, "
            f"not {options}; resume with the same options"
        )
    differences = describe_differences(
        {**state["recipe"], "seed": state["seed"]}, {**recipe.to_dict(), "seed": seed}
    )
    if differences:
        was, now = differences
        raise ValueError(
            f"the run in {path.parent} was started with {was}, but this command asks for {now}; "
            "resume with the same options"
        )


def _last_good(path: Path | None) -> str:
    if path is None:
        return "no checkpoint is written without --out"
    try:
        return f"the last good checkpoint is {path} (step {load_checkpoint(path)['step']})"
    except CheckpointError:
        return "no checkpoint was written yet"


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop the metrics lines after `step`: a resumed run does those steps again."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by the kill
            continue
        if row.get("step", math.inf) <= step:
            kept.append(line + "\n")
    atomic_write(path, lambda f: f.write("".join(kept).encode()))


def _record_resume(out: Path, step: int) -> None:
    path = out / "config.json"
    if not path.exists():
        return
    config = json.loads(path.read_text())
    config.setdefault("resumes", []).append(
        {"step": step, "time": _now(), "command": _command_line()}
    )
    atomic_write(path, lambda f: f.write(_json(config).encode() + b"\n"))


def _config(
    model: str,
    options: dict[str, object],
    recipe: Recipe,
    seed: int,
    train_data: Data,
    val_data: Data | ArrayDataset | StreamDataset | None,
    test_data: Data | ArrayDataset | StreamDataset | None,
    image_shape: list[int],
    device: torch.device,
    env: DistEnv,
    compile: bool,
    info: dict[str, object],
) -> dict[str, object]:
    """What config.json records: enough to rerun and to tell runs apart."""
    import numpy

    return {
        "model": model,
        "model_options": options,
        "recipe": recipe.to_dict(),
        "seed": seed,
        **info,
        "train_images": len(train_data),
        "val_images": len(val_data) if val_data is not None else None,
        "test_images": len(test_data) if test_data is not None else None,
        "classes": list(train_data.classes),
        "image_shape": image_shape,
        "processes": env.world_size,
        "compile": compile,
        "command": _command_line(),
        "started": _now(),
        "versions": {
            "cnnlab": cnnlab.__version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": numpy.__version__,
        },
        "machine": {**machine_info(device), "cpu_count": os.cpu_count()},
    }


def _command_line() -> list[str]:
    return [Path(sys.argv[0]).name, *sys.argv[1:]]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _json(obj: object) -> str:
    return json.dumps(obj, default=str)


def _progress_bar(total: int, start: int, enabled: bool) -> Any:
    from tqdm import tqdm

    # Into a log file rather than a terminal, a line every 30 s instead of every step.
    interval = 0.1 if sys.stderr.isatty() else 30.0
    return tqdm(
        total=total, initial=start, disable=not enabled, unit="step", dynamic_ncols=True,
        desc="train", file=sys.stderr, mininterval=interval, maxinterval=max(10.0, interval),
    )  # fmt: skip


def _postfix(row: Mapping[str, Any]) -> str:
    return (
        f"loss {row['train_loss']:.3f} acc {100 - row['train_error']:.1f}% "
        f"{row['images_per_s']:.0f} img/s"
    )


def _summary_line(row: Mapping[str, Any], total: int) -> str:
    parts = [
        f"step {row['step']}/{total}",
        f"epoch {row['epoch']:.1f}",
        f"lr {row['lr']:.4g}",
        f"loss {row['train_loss']:.4f}",
        f"train error {row['train_error']:.2f}%",
    ]
    for name in ("val", "test"):
        if row.get(f"{name}_error") is not None:
            parts.append(f"{name} error {row[f'{name}_error']:.2f}%")
    parts += [f"{row['images_per_s']:.0f} images/s", f"{row['elapsed_s']:.0f} s"]
    return "  ".join(parts)


def _print_final(result: TrainResult, out: Path | None, until_train_error: float | None) -> None:
    lines = []
    if result.reached_step is not None:
        level = f"{until_train_error:g}%"
        lines.append(f"ended at step {result.reached_step}: training error at or below {level}")
    if result.test_error is not None:
        lines.append(
            f"test error {result.test_error:.2f}% (top-5 {result.test_top5_error:.2f}%) "
            f"after {result.steps} steps"
        )
    if result.best_val_error is not None:
        best = f"best validation error {result.best_val_error:.2f}%"
        if result.best_test_error is not None:
            best += f", test error of that checkpoint (best.pt) {result.best_test_error:.2f}%"
        lines.append(best)
    if out is not None:
        lines.append(f"run folder: {out}")
    print("\n".join(lines))
