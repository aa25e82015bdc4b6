"""Training recipes: frozen, named, each with the source of its numbers.

    recipe   batch  steps   lr    schedule                            source
    he2015   128    64,000  0.1   /10 at 32k and 48k; 0.01 until      He et al. 2015,
                                  train error < 80% for 110+ layers   section 4.2
    fast     128    7,800   0.4   linear warm-up 400 steps, then      ours (cnnlab),
                                  linear decay to zero                see FAST below
    relu2012 128    15,600  0.02  constant (searched per network);    Krizhevsky 2012,
                                  steps: a cap, runs end at 25%       s. 3.1 (Fig. 1), 5

    ImageNet (streamed image folders; steps of ILSVRC-2012's 1.28M images):
    alexnet2012    128  900,821     0.01  /10 on a val plateau, 3 times   Krizhevsky 2012, s. 5
    vgg2014        256  370,000     0.01  /10 on a val plateau, 3 times   Simonyan 2014, s. 3.1
    googlenet2014   32  10,000,000  0.01  x0.96 every 8 epochs            Szegedy 2014, s. 6
    resnet2015     256  600,000     0.1   /10 on a val plateau, 3 times   He 2015, s. 3.4

A recipe says how to optimise, not what to optimise: the model stays the paper's model.
`steps` counts optimizer steps (the paper's "iterations"); milestones and warm-up are in
steps too and scale with `steps` (`with_steps`, `scaled`), so `--epochs 30` or `--budget 0.5`
keep the shape of the schedule.

Precision and memory layout are recorded here because they change the arithmetic of a run
(bfloat16 autocast rounds activations), though not the model. Every recipe leaves them to the
hardware by default ("auto", see hardware.py): bfloat16 where the device runs it natively,
float32 elsewhere; config.json records what was chosen and why.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

from cnnlab.data.transforms import PAD_MODES
from cnnlab.models.registry import check_choice

__all__ = [
    "ALEXNET2012",
    "FAST",
    "GOOGLENET2014",
    "HE2015",
    "RECIPES",
    "RELU2012",
    "RESNET2015",
    "VGG2014",
    "Recipe",
    "describe_differences",
    "get_recipe",
]

SCHEDULES = ("step", "linear", "cosine", "plateau")
PRECISIONS = ("auto", "fp32", "bf16")
NORMALIZE = ("channel", "pixel", "mean")
FLIPS = ("random", "alternate")
OPTIMIZERS = ("sgd", "muon", "auto")
# "pad": the CIFAR crop of in-memory images (4-pixel pad, random crop); the others are the
# ImageNet papers' crops of streamed images (cnnlab.data.augment).
CROPS = ("pad", "square", "scale", "area")

# ILSVRC-2012's training images: the ImageNet recipes' steps are the papers' epochs of them.
IMAGENET_TRAIN = 1_281_167


@dataclass(frozen=True)
class Recipe:
    """How to train: optimizer, schedule, regularisation and arithmetic, with their source."""

    name: str
    source: str  # the paper section (or our reasoning) the numbers come from
    batch_size: int  # global: split across processes when several train together
    steps: int  # optimizer steps (the paper counts iterations)
    lr: float  # peak learning rate
    schedule: str = "step"  # "step": lr * lr_gamma**(milestones passed); "linear"/"cosine": to 0
    lr_milestones: tuple[int, ...] = ()  # "step" only: lr multiplied by lr_gamma at these steps
    lr_gamma: float = 0.1
    warmup_steps: int = 0  # linear warm-up from lr / warmup_steps to lr over these steps
    # He et al. 2015, section 4.2, for 110 layers and deeper: "we use 0.01 to warm up the
    # training until the training error is below 80% (about 400 iterations), and then go
    # back to 0.1". Driven by the running training error (see schedules.SlowStart).
    slow_start_lr: float | None = None
    slow_start_until_error: float = 0.8
    slow_start_min_depth: int = 110
    momentum: float = 0.9
    nesterov: bool = False
    # "sgd"; "muon": the convolution filters take Muon (Jordan et al. 2024; muon.py), their
    # peak lr muon_lr (how far a filter bank turns in a step), on the schedule's shape; the
    # rest keeps SGD at lr. Needs batch norm after the convolutions. "auto": "muon" for a
    # network with batch norm, "sgd" for one without (AlexNet, VGG, GoogLeNet as published).
    # muon_momentum: the filters' momentum (None: `momentum`, as the rest). muon_first_conv
    # False: the first convolution, the one that sees the images, keeps SGD with the rest (as
    # airbench's does).
    optimizer: str = "sgd"
    muon_lr: float = 0.04
    muon_momentum: float | None = None
    muon_first_conv: bool = True
    # Learning rate of batch norm's shifts (its biases) relative to lr, under SGD either way;
    # airbench (Jordan 2024, airbench94_muon) trains them far faster than its last layer.
    bn_bias_lr_scale: float = 1.0
    # Learning rate of the last layer (the network's last nn.Linear) relative to lr; airbench
    # trains its classifier far slower than its shifts.
    head_lr_scale: float = 1.0
    weight_decay: float = 1e-4
    decay_norm_and_bias: bool = True  # False: no weight decay on BatchNorm weights and biases
    label_smoothing: float = 0.0
    # Decay per step of an exponential moving average of the weights (averaging.py), which is
    # then what is evaluated and saved; 0: off.
    ema: float = 0.0
    # Lookahead (Zhang et al. 2019; averaging.py): every lookahead_steps optimizer steps the
    # slow weights move lookahead_alpha of the way to the trained ones, which restart there.
    lookahead_steps: int = 0  # 0: off
    lookahead_alpha: float = 0.5
    # Sharpness-aware minimisation (Foret et al. 2021, SAM; step.py): each step applies the
    # gradient taken at the weights moved sam_rho along the normalised gradient, the loss's
    # steepest rise nearby. Two forward and backward passes a step: twice an epoch's arithmetic
    # for the same steps. 0: off.
    sam_rho: float = 0.0
    # The last batch norm of each residual branch starts at scale 0 (Goyal et al. 2017; see
    # models.resnet.zero_init_residual): an initialisation, the network unchanged.
    zero_init_residual: bool = False
    # The first convolution starts as a whitening of the training images' patches (Coates, Lee
    # & Ng 2011; airbench, Jordan 2024; see whitening.py): an initialisation, trained after.
    whiten_init: bool = False
    # Fraction of each batch's statistics that BatchNorm's running mean and variance take in
    # (PyTorch's `momentum`; the running statistics are what evaluation uses). None: the
    # network's own (PyTorch's default, 0.1).
    bn_momentum: float | None = None
    aux_weight: float = 0.3  # GoogLeNet's auxiliary classifiers (Szegedy et al. 2014, section 5)
    augment: bool = True  # 4-pixel zero pad, random 32x32 crop, horizontal flip (section 4.2)
    # crop "pad": zero pixels added on each side before the random crop, so shifts of up to
    # `pad` each way (He et al. 2015, section 4.2: "4 pixels are padded on each side");
    # pad_mode "reflect": the image's border mirrored into the padding instead of zeros
    pad: int = 4
    pad_mode: str = "zeros"
    flip: str = "random"  # "random": a coin per image and step; "alternate": over epochs
    cutout: int = 0  # side of a square zeroed per training image (DeVries & Taylor 2017); 0: off
    # Fraction of the steps, at the end of the run, that train on the images as they are (no
    # crop, flip or cutout), as the test images are seen; 0: augmented throughout. In-memory
    # images only.
    clean_final: float = 0.0
    crop: str = "pad"  # see CROPS; "square" | "scale" | "area" need the streaming data path
    scale_range: tuple[int, int] = (256, 256)  # shorter side's range for crop "square"/"scale"
    lighting: float = 0.0  # std of AlexNet's PCA colour noise (section 4.1); 0: off
    test_resize: int = 256  # evaluation of streamed images: shorter side, then a centre crop
    # "plateau": lr * lr_gamma**k, k growing by one when the validation error has not improved
    # for plateau_patience evaluations, at most plateau_max times (the ImageNet papers).
    plateau_patience: int = 1
    plateau_max: int = 3
    # Input normalisation from the training images: "pixel" subtracts the per-pixel mean (the
    # paper, section 4.2); "channel" subtracts the per-channel mean and divides by the std;
    # "mean" subtracts the per-channel mean only (VGG, section 2.1: "the mean RGB value").
    normalize: str = "channel"
    # "auto" (by the hardware) | "fp32" | "bf16" (autocast; weights and optimizer stay float32)
    precision: str = "auto"
    channels_last: bool | None = None  # NHWC layout: same math; None: where it is faster

    def __post_init__(self) -> None:
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("normalize", self.normalize, NORMALIZE)
        check_choice("flip", self.flip, FLIPS)
        check_choice("crop", self.crop, CROPS)
        check_choice("pad_mode", self.pad_mode, PAD_MODES)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        for field in ("lr", "muon_lr", "bn_bias_lr_scale", "head_lr_scale"):
            value = getattr(self, field)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{field} must be a positive number, got {value}")
        if self.plateau_patience < 1 or self.plateau_max < 0:
            raise ValueError("plateau_patience must be at least 1 and plateau_max at least 0")
        if self.cutout < 0:
            raise ValueError(f"cutout must be >= 0 pixels, got {self.cutout}")
        if not 0 <= self.clean_final <= 1:
            raise ValueError(
                f"clean_final must be a fraction of the steps in [0, 1], got {self.clean_final}"
            )
        if self.pad < 0:
            raise ValueError(f"pad must be >= 0 pixels (0: flips only), got {self.pad}")
        for field in ("batch_size", "steps"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be at least 1, got {getattr(self, field)}")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(
                f"warmup_steps must be in 0..steps ({self.steps}), got {self.warmup_steps}"
            )
        if list(self.lr_milestones) != sorted(set(self.lr_milestones)) or any(
            m < 1 for m in self.lr_milestones
        ):
            raise ValueError(
                f"lr_milestones must be increasing positive steps, got {self.lr_milestones}"
            )
        for f in dataclasses.fields(self):  # -R reads 1 as a number, true as a bool
            if f.type == "bool" and not isinstance(getattr(self, f.name), bool):
                raise ValueError(f"{f.name} must be true or false, got {getattr(self, f.name)!r}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema must be in [0, 1) (0: off), got {self.ema}")
        if self.lookahead_steps < 0 or not 0 < self.lookahead_alpha <= 1:
            raise ValueError(
                "lookahead_steps must be >= 0 (0: off) and lookahead_alpha in (0, 1], got "
                f"{self.lookahead_steps} and {self.lookahead_alpha}"
            )
        if not (self.sam_rho >= 0 and math.isfinite(self.sam_rho)):
            raise ValueError(f"sam_rho must be a distance >= 0 (0: off), got {self.sam_rho}")
        if self.bn_momentum is not None and not 0 < self.bn_momentum <= 1:
            raise ValueError(f"bn_momentum must be in (0, 1] (or unset), got {self.bn_momentum}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError("weight_decay must be >= 0 and momentum in [0, 1)")
        if self.muon_momentum is not None and not 0 <= self.muon_momentum < 1:
            raise ValueError(f"muon_momentum must be in [0, 1) or unset, got {self.muon_momentum}")

    def with_steps(self, steps: int) -> Recipe:
        """The same recipe over `steps` optimizer steps; milestones and warm-up scale with it."""
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        ratio = steps / self.steps
        milestones = tuple(sorted({max(1, round(m * ratio)) for m in self.lr_milestones}))
        return dataclasses.replace(
            self,
            steps=steps,
            lr_milestones=milestones,
            warmup_steps=min(steps, round(self.warmup_steps * ratio)),
        )

    def with_epochs(self, epochs: float, train_size: int) -> Recipe:
        """The same recipe over `epochs` passes of `train_size` images.

        The last incomplete batch of each epoch is dropped.
        """
        if epochs <= 0:
            raise ValueError(f"epochs must be positive, got {epochs}")
        steps_per_epoch = train_size // self.batch_size
        if steps_per_epoch < 1:
            raise ValueError(
                f"batch size {self.batch_size} is larger than the training set "
                f"({train_size} images)"
            )
        return self.with_steps(max(1, round(epochs * steps_per_epoch)))

    def scaled(self, budget: float) -> Recipe:
        """The same recipe with `budget` times the steps (0.5: half the compute)."""
        if not budget > 0:
            raise ValueError(f"budget must be positive, got {budget}")
        return self.with_steps(max(1, round(self.steps * budget)))

    def replace(self, **changes: object) -> Recipe:
        """A copy with some fields changed (None: unchanged); `steps` rescales the schedule.

        Raises:
            ValueError: a name that is not a field (the message lists the fields), or a value
                out of range.
        """
        changes = {k: v for k, v in changes.items() if v is not None}
        known = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise ValueError(
                f"{', '.join(map(repr, unknown))} is not a recipe field; the fields: "
                f"{', '.join(known[2:])}"
            )
        if isinstance(changes.get("lr_milestones"), int | float):  # one milestone, from -R
            changes["lr_milestones"] = (int(changes["lr_milestones"]),)
        steps = changes.pop("steps", None)
        recipe = dataclasses.replace(self, **changes) if changes else self
        return recipe.with_steps(int(steps)) if steps is not None else recipe

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-able fields (tuples as lists), for config.json and checkpoints."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, fields: dict[str, object]) -> Recipe:
        """Inverse of `to_dict`."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {
            k: tuple(v) if isinstance(v, list) else v for k, v in fields.items() if k in known
        }
        return cls(**values)


HE2015 = Recipe(
    name="he2015",
    source="He et al. 2015, arXiv:1512.03385, section 4.2 (CIFAR-10)",
    batch_size=128,
    steps=64_000,
    lr=0.1,
    schedule="step",
    lr_milestones=(32_000, 48_000),
    slow_start_lr=0.01,
    momentum=0.9,
    weight_decay=1e-4,
    augment=True,
    normalize="pixel",
)

# Our recipe for short runs. Its choices, each a common one in fast CIFAR training (Goyal et
# al. 2017 for warm-up, Szegedy et al. 2016 for label smoothing, Smith 2018 for a short
# triangular schedule, Jordan et al. 2024 for Muon), with what each measured for issue 8
# (resnet20, 30 epochs, 45k split, error on the 5k validation images, test error recorded, not
# used; docs/results/issue8-proxies). The choices after the first were measured with SGD for
# every weight, this recipe until 2026-12-06; Muon on top of them:
# - Muon for the convolution filters at muon_lr 0.04, SGD for the rest (optimizer "auto": all
#   SGD for a network without batch norm). Seed 0 on the Xeon: muon_lr 0.02 11.6% and 0.04
#   11.2% against 12.4% (test 12.4% and 11.9% against 12.9%), the one lever past one run's
#   noise; on all 50k, seeds 0, 1 and 2, test 12.2% +- 0.1 against SGD's 12.9% +- 0.1; resnet56
#   at 40 epochs on all 50k, seeds 0, 1 and 2, test 10.8% +- 0.1 against SGD's 11.0% +- 0.3;
# - batch 128 at lr 0.4 with Nesterov momentum: four times the paper's step per image (0.1
#   per 128) and twice the steps of batch 256. Over three seeds 11.7% +- 0.2 against
#   12.3% +- 0.3 for batch 256 at lr 0.2, this recipe until 2026-11-23 (test 13.0% +- 0.1
#   against 13.3% +- 0.3). Half as much noise gains less (seed 0, against 12.6%: lr 0.4 at
#   256 12.2%, batch 128 at lr 0.2 12.4%); twice as much loses (batch 64 at lr 0.4 12.6%,
#   batch 128 at lr 0.8 12.3%, against 11.7%); plain momentum, seed 0 on a second CPU (Intel
#   Xeon), 12.0% against 12.4% there (test 12.9% both): no evidence either way;
# - a linear warm-up over the first ~5% of steps, then linear decay to zero (no milestones
#   to tune when the budget changes); seed 0: cosine decay 12.0%, a 15% warm-up 11.6%,
#   against 11.7% (test 13.4% both, against 12.9%);
# - about 20 epochs of the 50k training images (7,800 steps of 128) unless told otherwise;
# - weight decay 5e-4, not on BatchNorm and biases: at 10 epochs the paper's 1e-4 without
#   smoothing 17.6% against 16.8%; at 30, 2.5e-4 12.6% and 1e-3 12.2% against 11.7%; on
#   BatchNorm and biases too (the Xeon) 12.4% against 12.4% (test 13.5% against 12.9%);
# - label smoothing 0.1: none measured 16.4% against 16.3% at 10 epochs (batch 256), and
#   11.8% against 11.7% at 30; 0.2 at 30 epochs 12.3%;
# - the paper's crop (pad 4): shifts of at most 2 pixels, three seeds, 11.65% +- 0.27 against
#   11.66% +- 0.17 (test 12.9% +- 0.3 against 13.0% +- 0.1), no better, so the paper's stays;
# - its padding reflected from the image's border instead of zeros (pad_mode "reflect", as
#   airbench's crop does), measured with Muon, float32, three seeds each: 11.39% +- 0.26
#   against 11.45% +- 0.19 (test 11.9% +- 0.3 against 12.3% +- 0.3), level on validation
#   (-0.06, se 0.19); taken by the rule stated before seeds 1 and 2 ended: the lower mean;
# - the first convolution started as a whitening of the training images' 3x3 patches
#   (whiten_init; Coates et al. 2011, airbench), trained after like every other layer; under
#   Muon, seeds 0, 1 and 2 (bf16, a Zen 4): 11.04% +- 0.13 against 11.25% +- 0.19, lower on
#   every seed (-0.21, se 0.09; test 12.0% +- 0.2 against 12.2% +- 0.2); taken by the rule
#   stated before seed 2 ended. With SGD alone it had gained nothing (12.3% against 12.4%).
#   On all 50k, seeds 0, 1 and 2 (bf16, the Zen 4), test 12.08% +- 0.28, the random start's
#   12.08% +- 0.23: the same; seeds 3 (float32, a Zen 3) 12.24% and 4 (bf16, a Xeon) 11.96%,
#   five seeds 12.09% +- 0.22; resnet56 at 40 epochs, seeds 0, 1 and 2, 10.75%, 10.37% and
#   10.46% (10.53% +- 0.20), each under he2015's 11.41%;
# - precision and layout by the hardware (bfloat16 where native; weights stay float32):
#   float32 throughout, seeds 0 and 1, 11.9% +- 0.2 against 11.6% +- 0.1 (test 13.2% against
#   13.0%), no better and 1.5x slower here.
# Measured and left out (seed 0, 30 epochs): alternating flips, cutout 8 and a weight average
# (ema 0.999) gain about half a point at batch 256 (12.1% against 12.6%), nothing on top of lr 0.4
# (12.0%), and flips with the average cost 0.3 at batch 128 (12.0% against 11.7%);
# zero_init_residual costs 2.8 (15.5%: slower to train); Lookahead (5 steps, alpha 0.5) 0.3 (11.9%);
# batch norm momentum 0.01 instead of 0.1 costs 0.4 (12.1%; test 13.0% against 12.9%); the last
# tenth of the steps on images as they are (clean_final 0.1; the Xeon) 12.0% against 12.4% (test
# 13.0% against 12.9%); a weight average alone (ema 0.999; the Xeon) 12.0% against 12.4% (test 13.1%
# against 12.9%), and over five seeds on an H200 11.9% +- 0.2 against 12.1% +- 0.3 (test 13.2%
# +- 0.1 against 13.1% +- 0.2). Three seeds each on the H200, against 12.3% +- 0.1 (test 13.1%):
# cutout 8 12.4%, lr 0.6 12.4%, weight decay 1e-3 12.6%, cutout 8 with the average 12.6% (test 13.1%
# to 13.7%): at 30 epochs no added regulariser helps. Seed 0 on the Xeon, against 12.4% (test
# 12.9%): with SGD for every weight, the whitened first convolution (whiten_init, fast's since
# it measured lower under Muon) 12.3% (test 13.2%), ahead only in the first epochs; batch 64 at
# lr 0.2 (the same lr per image, twice the steps) 12.3% (test 12.9%); momentum 0.95 at lr 0.2
# (the same effective step) 12.1% (test 12.8%), within one run's noise. The same seed of this
# recipe ends at 11.7% on a Zen 4 and 12.4% on the Xeon (test 12.9% both; bf16 rounds
# differently): one run's validation error is uncertain by about half a point. With SGD alone
# resnet20 ended above the paper's 11.9% test error at 30 epochs
# (13.0% trained on the 45k split; 12.9% +- 0.1 on all 50k, three seeds); at 92 epochs (`--time 1`
# on an H100, batch 256 at lr 0.2) it ended at 11.9%; at 45, 50 and 60 (this recipe, seeds 0, 1 and
# 2, the Xeon) 12.4% +- 0.2, 12.3% +- 0.2 and 11.9% +- 0.3, and at 50 over five seeds 12.1% +- 0.3
# (seeds 3 and 4 at 11.84% and 11.87%, under the bar). The bar is one run: he2015 itself ended at
# 12.3% (H100, bf16), 12.2% and 12.5% (the Xeon, bf16, seeds 0 and 1) when run again, 12.2% +- 0.3
# over its four runs at 164 epochs, which SGD alone matches at about 50 epochs. The test-time
# mirror (`cnnlab eval --tta flip`) gains this recipe about 1.0 at every length and he2015 1.4 to
# 1.8 (10.8% and 10.7%): it does not close the gap. Resnet56 at 40 epochs on all 50k, seeds 0, 1 and
# 2: 11.3%, 10.9% and 10.8% (11.0% +- 0.3), each under the paper's recipe's 11.4% at 164 epochs.
# Around Muon (seed 0, 45k split): muon_lr 0.06 11.9%, SGD's lr 0.2 for the rest 11.6%, the
# filters' own momentum (muon_momentum) 0.8 11.1% and 0.95 12.0%, against 11.2%: none past noise;
# batch 64 at lr 0.2 11.5% (test 12.7%), no label smoothing 11.7% (test 12.4%), the first
# convolution left on SGD (muon_first_conv false) 11.3% (test 12.8%), SGD's lr 0.8 for the rest
# 12.0% (test 12.8%): none helps. Float32 (a Xeon without native bf16) 11.3% (test 12.0%), as
# bf16; with alternating flips 11.2% (test 12.8%), with a weight average (ema 0.999) 10.6% (test
# 12.2%): the average's lead on validation, as with SGD over five seeds, does not show on test;
# not taken. Paired within two runs of this recipe (the trained weights evaluated beside the average
# from one checkpoint; seeds 0 and 1, float32, a Zen 3): +0.34 and -0.48 on validation, +0.01 and
# +0.08 on test: dropped. In float32, against 11.3% (test 12.0%): label smoothing 0.2 11.5% (test
# 12.6%), cutout 8 11.5% (test 12.2%), the filters' momentum 0.6 11.7% (test 12.4%; fits fastest,
# 6.1% training error against 8.4%), no weight decay (only the last layer's had any) 11.2% (test
# 12.4%): none helps. No warm-up 12.1% (test 13.1%): the warm-up stays; twice as long (10%) 11.2%
# (test 12.2%): level, 5% stays. With reflected padding, the last tenth of the steps on clean images
# (clean_final 0.1), seeds 0 and 1, 11.96% and 11.36% against 11.14% and 11.66% (test 11.9% and
# 12.4% against 11.6% and 12.1%): not taken; batch norm statistics averaged over a whole pass at the
# end (PreciseBN, Wu & Johnson 2021), six runs: -0.02 (test -0.02), the running averages stay. With
# the whitened start (seed 0, bf16 on a Zen 4), against 10.9% (test 11.9%): batch norm's shifts at
# 0.25, 4 and 16 times the rate (bn_bias_lr_scale; airbench's are far faster) 11.1%, 11.1% and 11.5%
# (test 12.2%, 11.7%, 12.2%), the last layer at 0.25 times it (head_lr_scale) 11.4% (test 12.0%):
# one rate for every weight outside Muon stays. With Muon and zero padding resnet20 ended at 12.2%
# +- 0.1 test error at 30 epochs on all 50k: he2015's 164-epoch mean, 0.3 above the bar; with
# reflected padding (seeds 0, 1 and 2, float32 on the Xeon) at 12.1% +- 0.2, 0.18 above the 11.9%
# bar, and with the whitened start too (seeds 0 to 4) at 12.1% +- 0.2, 0.19 above it.
FAST = Recipe(
    name="fast",
    source=(
        "cnnlab: Muon for the filters, batch 128 at lr 0.4, linear warm-up and decay, Nesterov, "
        "label smoothing, reflected padding, a whitened first convolution"
    ),
    batch_size=128,
    steps=7_800,
    lr=0.4,
    schedule="linear",
    warmup_steps=400,
    momentum=0.9,
    nesterov=True,
    optimizer="auto",
    muon_lr=0.04,
    weight_decay=5e-4,
    decay_norm_and_bias=False,
    label_smoothing=0.1,
    augment=True,
    pad_mode="reflect",
    whiten_init=True,
    normalize="channel",
)


# Krizhevsky et al. 2012, section 3.1 and Fig. 1: the four-layer CIFAR-10 network with ReLUs
# against the same with tanh units (models/alexnet_cifar.py), trained until the training error
# reaches 25%. "No regularization of any kind was employed": no weight decay, no augmentation,
# no dropout, no label smoothing. "The learning rates for each network were chosen
# independently to make training as fast as possible": the learning rate is the one setting
# the experiment searches, per network (experiments/speed.py); `lr` here is where its search
# starts. Batch 128 and momentum 0.9 are the paper's own (section 5, for AlexNet; the paper
# gives none for Fig. 1). Choices of ours:
# - a constant learning rate: the race ends early (25% training error), and a decaying
#   schedule would tie the speed to the length chosen for it;
# - steps: a cap of 40 epochs of CIFAR-10's 50,000 images (390 steps of 128 an epoch), where
#   a run that has not reached 25% stops;
# - inputs standardised per channel (mean 0, std 1), so that the variance-keeping
#   initialisation of both networks holds from the first layer on (the paper subtracts the
#   mean image only, section 2);
# - float32, not "auto": under bfloat16 autocast tanh's outputs are rounded near +-1 and with
#   them its derivative 1 - tanh^2, the saturation the comparison is about. Measured on a
#   random batch at initialisation: conv1's gradient is off by 10% (relative norm) in the tanh
#   network against 2% in the ReLU one; float32 keeps the race fair, at about 1.6x the time
#   of a bfloat16 step on this project's CPU.
RELU2012 = Recipe(
    name="relu2012",
    source="Krizhevsky et al. 2012, section 3.1 (Fig. 1); batch and momentum of section 5",
    batch_size=128,
    steps=15_600,
    lr=0.02,
    schedule="step",
    momentum=0.9,
    weight_decay=0.0,
    augment=False,
    label_smoothing=0.0,
    normalize="channel",
    precision="fp32",
)


def _imagenet_steps(epochs: float, batch_size: int) -> int:
    """Optimizer steps of `epochs` passes over ILSVRC-2012's training images."""
    return round(epochs * IMAGENET_TRAIN / batch_size)


# The ImageNet papers' recipes. Their steps are for ILSVRC-2012 (1.28M images); on another
# image folder give --epochs, and the schedule keeps its shape. Each model's initialisation
# is the paper's and lives with the model (models/*.py), dropout too.

# Krizhevsky et al. 2012, section 5: batch 128, momentum 0.9, weight decay 0.0005, lr 0.01
# "divided by 10 when the validation error rate stopped improving with the current learning
# rate ... reduced three times prior to termination", "roughly 90 cycles through the training
# set". Section 2: shorter side rescaled to 256, the central 256 x 256 patch, per-pixel mean
# subtracted; section 4.1: random 224 crops (227 here, see models/alexnet.py) and their
# mirrors, PCA colour noise of std 0.1.
ALEXNET2012 = Recipe(
    name="alexnet2012",
    source="Krizhevsky et al. 2012, sections 2, 4.1 and 5",
    batch_size=128,
    steps=_imagenet_steps(90, 128),
    lr=0.01,
    schedule="plateau",
    lr_gamma=0.1,
    plateau_max=3,
    momentum=0.9,
    weight_decay=5e-4,
    crop="square",
    scale_range=(256, 256),
    lighting=0.1,
    normalize="pixel",
)

# Simonyan & Zisserman 2014, section 3.1: batch 256, momentum 0.9, weight decay 5e-4, dropout
# 0.5 on fc6 and fc7 (in the model), lr 0.01 "decreased by a factor of 10 when the validation
# set accuracy stopped improving ... decreased 3 times, and the learning was stopped after 370K
# iterations (74 epochs)"; scale jittering S in [256, 512], random 224 crops, mirrors and the
# random RGB colour shift; section 2.1: "subtracting the mean RGB value".
VGG2014 = Recipe(
    name="vgg2014",
    source="Simonyan & Zisserman 2014, arXiv:1409.1556, sections 2.1 and 3.1",
    batch_size=256,
    steps=370_000,
    lr=0.01,
    schedule="plateau",
    lr_gamma=0.1,
    plateau_max=3,
    momentum=0.9,
    weight_decay=5e-4,
    crop="scale",
    scale_range=(256, 512),
    lighting=0.1,
    normalize="mean",
)

# Szegedy et al. 2014, section 6: momentum 0.9, "fixed learning rate schedule (decreasing the
# learning rate by 4% every 8 epochs)", patches of 8%..100% of the area with aspect ratios
# 3/4..4/3, auxiliary losses weighted 0.3 (section 5). The paper gives no batch size, initial
# lr, weight decay or length; those are BVLC Caffe's published GoogLeNet reproduction
# (models/bvlc_googlenet/solver.prototxt and train_val.prototxt): batch 32, lr 0.01, weight
# decay 2e-4, x0.96 every 320,000 iterations (8 epochs), 10M iterations. Not done: Polyak
# averaging of the weights and Howard's photometric distortions (the paper gives no numbers).
GOOGLENET2014 = Recipe(
    name="googlenet2014",
    source="Szegedy et al. 2014, arXiv:1409.4842, sections 5 and 6; BVLC Caffe solver",
    batch_size=32,
    steps=10_000_000,
    lr=0.01,
    schedule="step",
    lr_milestones=tuple(range(320_000, 10_000_000, 320_000)),
    lr_gamma=0.96,
    momentum=0.9,
    weight_decay=2e-4,
    aux_weight=0.3,
    crop="area",
    normalize="channel",
)

# He et al. 2015, section 3.4: shorter side in [256, 480], random 224 crops and mirrors, the
# per-pixel mean subtracted, "the standard color augmentation in [21]" (AlexNet's), batch 256,
# SGD momentum 0.9, weight decay 0.0001, lr 0.1 "divided by 10 when the error plateaus",
# "up to 60 x 10^4 iterations", no dropout; BN after each convolution (in the model).
RESNET2015 = Recipe(
    name="resnet2015",
    source="He et al. 2015, arXiv:1512.03385, section 3.4",
    batch_size=256,
    steps=600_000,
    lr=0.1,
    schedule="plateau",
    lr_gamma=0.1,
    plateau_max=3,
    momentum=0.9,
    weight_decay=1e-4,
    crop="scale",
    scale_range=(256, 480),
    lighting=0.1,
    normalize="pixel",
)

RECIPES: dict[str, Recipe] = {
    r.name: r for r in (HE2015, FAST, RELU2012, ALEXNET2012, VGG2014, GOOGLENET2014, RESNET2015)
}


def get_recipe(name: str) -> Recipe:
    """A named recipe ("he2015", "fast", "alexnet2012", "vgg2014", "googlenet2014", ...).

    Raises:
        ValueError: the name is not a recipe; the message lists the recipes.
    """
    check_choice("recipe", name, tuple(RECIPES))
    return RECIPES[name]


def describe_differences(
    saved: Mapping[str, object], asked: Mapping[str, object]
) -> tuple[str, str] | None:
    """For the keys of `asked` whose values differ in `saved`: ("k=old, ...", "k=new, ...").

    None when nothing differs. Used to refuse resuming (or reusing) a run made otherwise. A
    recipe field missing from `saved` (a run from before the field existed) has its default;
    `source`, the recipe's provenance in words, trains nothing and is not compared, nor are
    Muon's settings where both train with SGD alone.
    """
    defaults = {
        f.name: list(f.default) if isinstance(f.default, tuple) else f.default
        for f in dataclasses.fields(Recipe)
        if f.default is not dataclasses.MISSING
    }
    saved = {**defaults, **saved}
    ignored = {"source"}
    if saved.get("optimizer") == asked.get("optimizer") == "sgd":
        ignored |= {k for k in asked if k.startswith("muon_")}
    differ = [k for k in asked if k not in ignored and saved.get(k) != asked[k]]
    if not differ:
        return None
    was = ", ".join(f"{k}={saved.get(k)!r}" for k in differ)
    now = ", ".join(f"{k}={asked[k]!r}" for k in differ)
    return was, now
