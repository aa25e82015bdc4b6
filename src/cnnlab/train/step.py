"""The training step as one unit: a batch and a learning rate in, device tensors out.

    step = TrainStep(net, recipe, arithmetic, normalize, device)
    loss, wrong = step(x_uint8, y, lr)     # forward, loss, backward, optimizer update

With the recipe's `sam_rho`, the gradient the update applies is taken a second time, at
weights moved up the loss (sharpness-aware minimisation, `_sharpness_aware`).

The step owns what makes it fast on a given machine, decided once when it is built from the
hardware (see hardware.py) and never branched on by the loop: the precision (bfloat16 autocast
or float32), the memory layout (channels_last or NCHW), the optimizer (fused SGD, one kernel
for all parameters, or the recipe's Muon), and on CUDA a CUDA graph of the whole step.

CUDA graphs. At the recipe's batch sizes the CIFAR networks' kernels are small: launched one
by one from Python, resnet20 trains at ~20k images/s on an H100 whose arithmetic allows several
times that (issue 7). The step is therefore captured once as a CUDA graph (forward, loss,
backward and the optimizer update) and replayed each step: one launch, no Python per kernel.
What a graph needs, and how the step provides it:
- fixed addresses: the batch is copied into static input tensors; gradients and momentum
  buffers are allocated by the warm-up steps and the capture, and reused by every replay;
- no host sync inside: the learning rate is a device tensor the fused optimizer reads, set by
  `fill_` before each replay (an asynchronous kernel), so a captured step follows the
  schedule; loss and error counts stay on the device;
- no cached casts: autocast's weight cache is off (it would hold casts made at capture).
The first WARMUP_STEPS calls run eagerly on a side stream (they are real training steps), the
next one captures and replays. Graphs are not used with several processes (DDP's gradient
all-reduce) or with torch.compile (which has its own, `--compile`).

Determinism. On the CPU a step is a deterministic function of its inputs, so a resumed run
ends bitwise equal to an uninterrupted one (tests/test_train.py). On CUDA some backward
kernels (cuDNN's weight gradients among them) sum with atomics in an order that varies from
run to run: runs with one seed follow the same data order, augmentation and schedule and agree
in their statistics, not in their bits, and so does a resumed run. (cnnlab leaves
cudnn.benchmark off; torch.backends.cudnn.deterministic=True makes single steps repeatable,
as tests/test_gpu.py does, at some cost in speed.)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from cnnlab.data import Normalize
from cnnlab.train.hardware import Arithmetic, autocast
from cnnlab.train.muon import Muon
from cnnlab.train.recipes import Recipe

__all__ = ["TrainStep", "make_optimizer"]

WARMUP_STEPS = 3  # eager steps before the capture: cuDNN's algorithm search, buffers allocated


def make_optimizer(net: nn.Module, recipe: Recipe, lr: Tensor) -> torch.optim.Optimizer:
    """The recipe's optimizer, reading its learning rate from `lr`.

    "sgd": SGD with momentum, fused (one kernel for all parameters). "muon": Muon for the
    convolution filters (muon.py; without `muon_first_conv`, all but the first convolution's),
    at `muon_lr` on the schedule's shape and momentum `muon_momentum` where set, and SGD with
    momentum for the rest. "auto": "muon" for a convolutional network with batch norm, else
    "sgd". Without `decay_norm_and_bias`, BatchNorm scales and shifts and all biases (the 1-d
    parameters) get no weight decay. With `bn_bias_lr_scale` other than 1, BatchNorm's shifts
    take SGD at that multiple of the rate, and with `head_lr_scale` the last layer (the last
    nn.Linear, weight and bias); muon.py's SGD, which scales per group, then stands in for
    torch's also where no filter takes Muon.
    """
    params = [p for p in net.parameters() if p.requires_grad]
    normalized = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    filters = [p for p in params if p.ndim == 4]
    muon = recipe.optimizer == "muon" or (
        recipe.optimizer == "auto" and normalized and bool(filters)
    )
    if not muon:
        filters = []
    if filters and not recipe.muon_first_conv:
        convs = (m for m in net.modules() if isinstance(m, nn.modules.conv._ConvNd))
        first = next(convs).weight
        filters = [p for p in filters if p is not first]
    if filters and not normalized:
        raise ValueError(
            "optimizer muon keeps each filter bank at a fixed norm, which only batch norm after "
            f"the convolutions makes harmless; {type(net).__name__} has none: use optimizer sgd"
        )
    orthogonal = {id(f) for f in filters}
    params = [p for p in params if id(p) not in orthogonal]
    if recipe.decay_norm_and_bias:
        groups = [{"params": params, "weight_decay": recipe.weight_decay}]
    else:
        groups = [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": recipe.weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ]
    if recipe.bn_bias_lr_scale != 1:
        norms = (m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
        shifts = {id(m.bias) for m in norms if m.bias is not None}
        groups = _set_apart(groups, shifts, recipe.bn_bias_lr_scale)
    if recipe.head_lr_scale != 1:
        linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(
                f"head_lr_scale scales the last layer, the network's last nn.Linear; "
                f"{type(net).__name__} has none: leave head_lr_scale at 1"
            )
        head = {id(p) for p in linears[-1].parameters()}
        groups = _set_apart(groups, head, recipe.head_lr_scale)
    groups = [g for g in groups if g["params"]]
    if muon:
        scale = recipe.muon_lr / recipe.lr
        momentum = recipe.momentum if recipe.muon_momentum is None else recipe.muon_momentum
        groups.insert(
            0, {"params": filters, "orthogonal": True, "lr_scale": scale, "momentum": momentum}
        )
    if muon or any("lr_scale" in g for g in groups):  # torch's SGD has no per-group scale
        return Muon(groups, lr=lr, momentum=recipe.momentum, nesterov=recipe.nesterov)
    return torch.optim.SGD(
        groups, lr=lr, momentum=recipe.momentum, nesterov=recipe.nesterov, fused=True
    )


def _set_apart(groups: list[dict], chosen: set[int], scale: float) -> list[dict]:
    """Each group in two: the parameters whose id is in `chosen` at `scale` times its rate."""
    split = []
    for g in groups:
        rate = g.get("lr_scale", 1.0)
        split.append({**g, "params": [p for p in g["params"] if id(p) not in chosen]})
        apart = [p for p in g["params"] if id(p) in chosen]
        split.append({**g, "params": apart, "lr_scale": rate * scale})
    return split


class TrainForward(nn.Module):
    """The outputs the loss needs: (logits,), or GoogLeNet's (logits, aux1, aux2).

    A module of its own so that DistributedDataParallel and torch.compile see the auxiliary
    heads' forward too (calling `net.forward_with_aux` around the wrapper would bypass DDP's
    gradient synchronisation).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        if hasattr(self.net, "forward_with_aux"):
            return tuple(self.net.forward_with_aux(x))
        return (self.net(x),)


class TrainStep:
    """One optimizer step of `net` under `recipe`: `step(x, y, lr) -> (loss, wrong)`.

    Args:
        net: the network, already on `device` in the arithmetic's memory layout.
        recipe: loss (label smoothing, auxiliary weight) and optimizer settings.
        arithmetic: precision and layout (hardware.choose_arithmetic).
        normalize: the input normalisation, applied inside the step to uint8 batches.
        device: where the step runs.
        distributed: wrap the forward in DistributedDataParallel (several processes).
        compile: run the forward through torch.compile.
        cuda_graph: capture the step as a CUDA graph; None: on CUDA when neither
            `distributed` nor `compile`.
    """

    def __init__(
        self,
        net: nn.Module,
        recipe: Recipe,
        arithmetic: Arithmetic,
        normalize: Normalize,
        device: torch.device,
        *,
        distributed: bool = False,
        compile: bool = False,
        cuda_graph: bool | None = None,
    ) -> None:
        if cuda_graph is None:
            cuda_graph = device.type == "cuda" and not distributed and not compile
        if cuda_graph and (device.type != "cuda" or distributed or compile):
            raise ValueError("a CUDA graph step needs one process on a CUDA device, no compile")
        self.net, self.recipe, self.device = net, recipe, device
        self.normalize, self.arithmetic = normalize, arithmetic
        self.lr = torch.zeros((), dtype=torch.float32, device=device)
        self.optimizer = make_optimizer(net, recipe, self.lr)
        forward: nn.Module = TrainForward(net)
        if distributed:
            forward = DistributedDataParallel(
                forward, device_ids=[device] if device.type == "cuda" else None
            )
        if compile:
            forward = torch.compile(forward)  # type: ignore[assignment]
        self.forward = forward
        self.cuda_graph = cuda_graph
        # what SAM's second pass must leave as the first left it (see _sharpness_aware)
        batch_norms = (m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
        self._statistics = [b for m in batch_norms for b in m.buffers()]
        self.calls = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static: dict[str, Any] = {}

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        """Load a checkpoint's optimizer state, keeping this step's learning-rate tensor."""
        self.optimizer.load_state_dict(state)
        for group in self.optimizer.param_groups:  # the loaded groups carry a copy of lr
            group["lr"] = self.lr
            if isinstance(self.optimizer, torch.optim.SGD):
                group["fused"], group["foreach"] = True, None

    def describe(self) -> str:
        """How the step runs, for the line printed when training starts."""
        how = "CUDA graph" if self.cuda_graph else "eager"
        if isinstance(self.forward, DistributedDataParallel):
            how += ", DDP"
        optimizer = "Muon and SGD" if isinstance(self.optimizer, Muon) else "fused SGD"
        if self.recipe.sam_rho > 0:
            optimizer += f", SAM at rho {self.recipe.sam_rho:g} (two passes a step)"
        return f"step: {how}, {optimizer}"

    def __call__(self, x: Tensor, y: Tensor, lr: float) -> tuple[Tensor, Tensor]:
        """Train on one batch: uint8 images `x` (N x C x H x W) and labels `y`, at rate `lr`.

        Returns:
            (loss, wrong): the batch's mean loss (float32) and its number of misclassified
            images (int64), device tensors; reading them is the caller's sync point.
        """
        self.lr.fill_(lr)  # on CUDA an asynchronous kernel, no host sync
        self.calls += 1
        if not self.cuda_graph:
            return self._step(x, y)
        if self._graph is None:
            if self.calls <= WARMUP_STEPS:
                return self._warmup(x, y)
            self._capture(x, y)
        static = self._static
        static["x"].copy_(x, non_blocking=True)
        static["y"].copy_(y, non_blocking=True)
        assert self._graph is not None
        self._graph.replay()
        return static["loss"], static["wrong"]

    def _step(self, x: Tensor, y: Tensor, capturing: bool = False) -> tuple[Tensor, Tensor]:
        x = self.normalize(x).contiguous(memory_format=self.arithmetic.memory_format)
        loss, logits = self._loss(x, y, capturing)
        if not capturing:  # a captured backward writes the gradients instead (see _capture)
            self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.recipe.sam_rho > 0:
            self._sharpness_aware(x, y, capturing)
        self.optimizer.step()
        wrong = (logits.detach().argmax(dim=1) != y).sum()
        return loss.detach(), wrong

    def _loss(self, x: Tensor, y: Tensor, capturing: bool) -> tuple[Tensor, Tensor]:
        """The batch's loss (with GoogLeNet's auxiliary heads) and its logits, float32."""
        recipe = self.recipe
        with autocast(self.device, self.arithmetic.precision, cache_casts=not capturing):
            outputs = self.forward(x)
        logits = outputs[0].float()
        loss = nn.functional.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
        for aux in outputs[1:]:  # GoogLeNet's auxiliary classifiers
            loss = loss + recipe.aux_weight * nn.functional.cross_entropy(
                aux.float(), y, label_smoothing=recipe.label_smoothing
            )
        return loss, logits

    @torch.no_grad()
    def _sharpness_aware(self, x: Tensor, y: Tensor, capturing: bool) -> None:
        """Replace the gradients by SAM's (Foret et al. 2021): those at w + rho g / |g|.

        The weights w move `sam_rho` along the gradient g just taken (its norm over all the
        parameters), the batch's loss is taken again there, and the weights go back to w
        exactly (a copy, not a subtraction) before the optimizer applies the new gradient.
        The second pass leaves batch norm's running statistics as the first left them. No
        host sync: the step stays capturable as a CUDA graph.
        """
        params = [p for p in self.net.parameters() if p.grad is not None]
        grads = [p.grad for p in params]
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        scale = self.recipe.sam_rho / (norm + 1e-12)
        weights = [p.detach().clone() for p in params]
        kept = [b.clone() for b in self._statistics]
        for p, g in zip(params, grads, strict=True):
            p.add_(g * scale)
            g.zero_()  # the second backward adds into these
        with torch.enable_grad():
            self._loss(x, y, capturing)[0].backward()
        for p, w in zip(params, weights, strict=True):
            p.copy_(w)
        for b, k in zip(self._statistics, kept, strict=True):
            b.copy_(k)

    def _warmup(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        # Warm-up steps run on a side stream, as graph capture requires of the work before it.
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            loss, wrong = self._step(x, y)
        torch.cuda.current_stream(self.device).wait_stream(side)
        return loss, wrong

    def _capture(self, x: Tensor, y: Tensor) -> None:
        # Gradients set to None now are allocated inside the graph's memory pool, and the
        # captured backward writes (not adds) them, so the graph needs no zero_grad.
        self.optimizer.zero_grad(set_to_none=True)
        static = {"x": x.clone(), "y": y.clone()}
        self._static = static
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static["loss"], static["wrong"] = self._step(static["x"], static["y"], capturing=True)
        self._graph = graph
