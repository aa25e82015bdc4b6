"""Re-estimate a trained network's batch norm statistics, then evaluate it again (precise BN).

The question (issue 8, the twenty-sixth proxy): would `fast` gain from evaluating with batch
norm statistics averaged over a whole pass of the training images (Wu & Johnson 2021,
"Rethinking 'Batch' in BatchNorm", section 3: PreciseBN) instead of the running averages of the
last batches (PyTorch's momentum 0.1, about the last 10 batches)? For each checkpoint given:
validation and test error as saved, then after one pass over its training split at batch 128
in training mode with every running mean and variance reset and averaged over all batches
(momentum None), the images augmented as in training ("aug") or as they are ("clean").

    python docs/results/issue8-proxies/precise_bn.py RUN/checkpoint.pt ... > precise-bn.jsonl

One JSON line per checkpoint; errors in percent. The data path is the JPEG copy's
(../shared/datasets/cifar10-jpeg.tar.gz). A measurement, not part of cnnlab.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

from cnnlab.data import ArrayDataset, Normalize, crop_flip, crop_flip_params, load_dataset
from cnnlab.train.evaluate import evaluate, input_normalize, load_model
from cnnlab.train.recipes import Recipe

DATA = "../shared/datasets/cifar10-jpeg.tar.gz"
_splits: dict[str, ArrayDataset] = {}


def split(name: str) -> ArrayDataset:
    if name not in _splits:
        _splits[name] = load_dataset(DATA, name, progress=False)
    return _splits[name]


@torch.no_grad()
def reestimate(
    net: nn.Module, normalize: Normalize, images: Tensor, recipe: Recipe, augment: bool
) -> None:
    """Batch norm's running statistics averaged over one pass of `images` (batch 128)."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over all batches
    net.train()
    g = torch.Generator().manual_seed(123)
    order = torch.randperm(len(images), generator=g)
    batch = recipe.batch_size
    for start in range(0, len(images) - batch + 1, batch):
        x = images[order[start : start + batch]]
        if augment:
            top, left, flipped = crop_flip_params(batch, recipe.pad, generator=g)
            x = crop_flip(x, top, left, flipped, recipe.pad, recipe.pad_mode)
        net(normalize(x))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    net.eval()


def main(checkpoints: list[str]) -> None:
    cpu = torch.device("cpu")
    for checkpoint in map(Path, checkpoints):
        config = json.loads((checkpoint.parent / "config.json").read_text())
        recipe = Recipe.from_dict(config["recipe"])
        net, state = load_model(checkpoint, cpu)
        normalize = input_normalize(state["mean"], state["std"], cpu)
        held_out = {"test": split("test")}
        if config["split"] == "45k":
            held_out = {"val": split("val5k"), **held_out}
        train = split("train45k" if config["split"] == "45k" else "train")
        saved = {k: v.clone() for k, v in net.state_dict().items()}
        row: dict[str, object] = {"run": str(checkpoint.parent)}
        for how in ("saved", "aug", "clean"):
            net.load_state_dict(saved)
            if how != "saved":
                reestimate(net, normalize, train.images, recipe, augment=how == "aug")
            for name, data in held_out.items():
                error = evaluate(net, data, normalize, device=cpu).top1_error
                row[f"{name}_{how}"] = round(error, 2)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
