"""The papers' CIFAR-10 experiments as data: which networks to train, what the papers report,
and which of their findings to check.

    experiment    networks                                      paper
    degradation   plain20, plain56, resnet20, resnet56          He et al. 2015, Fig. 1, Fig. 6
                                                                (left and middle)
    depth         resnet20, 32, 44, 56, 110;                    He et al. 2015, Table 6,
                  plain20, 32, 44, 56                           Fig. 6 (left)
    shortcuts     resnet20 and resnet56 with option A and B;    He et al. 2015, section 3.3;
                  resnet110, resnet164 (original units) and     He et al. 2016 (arXiv:1603.05027),
                  preact_resnet110, preact_resnet164            Table 3
    identity-     resnet110 with each shortcut h(x) of Fig. 2;  He et al. 2016, Table 1;
    mappings      resnet110 and resnet164 with each unit of     He et al. 2016, Table 2
                  Fig. 4
    relu-vs-tanh  convnet4 with ReLU and with tanh, each at     Krizhevsky et al. 2012,
                  its fastest learning rate: iterations to      section 3.1, Fig. 1
                  25% training error (a SpeedExperiment)

Two kinds: an `Experiment` trains each run for the recipe's steps and compares final errors;
a `SpeedExperiment` races its runs to a training error, each at the learning rate of a grid
that gets it there in the fewest iterations (speed.py).

The paper's number for a run is the first CIFAR-10 (or CIFAR-100, for 100-class data) test
error on its model card, unless the run names another (`RunSpec.reported`): a number of a
second paper, or none where the card's number is for other options.

Deviations from the papers: the plain nets' Fig. 6 curves carry no number to compare with, so
their paper column is empty. Option B on CIFAR is not an experiment of the paper (it compares
A, B and C on ImageNet, Table 3); we run it because it is the CIFAR-sized version of that
ablation. The original-unit bottleneck ResNet-164 of He et al. 2016 is `resnet164` in the
registry; a run whose model is not registered would be listed with its number, not run.
"""

from __future__ import annotations

from dataclasses import dataclass

from cnnlab.models.registry import Reported, UnknownModelError, check_choice, model_card

__all__ = [
    "EXPERIMENTS",
    "FIGURES",
    "Claim",
    "Experiment",
    "Panel",
    "RunSpec",
    "SpeedExperiment",
    "get_experiment",
]

HE2015 = "He et al. 2015, arXiv:1512.03385"
HE2016 = "He et al. 2016, arXiv:1603.05027"

# Error curves per panel; final error against depth; layer responses (He et al. 2015, Fig. 7).
FIGURES = ("curves", "depth", "responses")


@dataclass(frozen=True)
class RunSpec:
    """One network of an experiment, trained once per seed.

    Attributes:
        model: a registered name (runs whose model is not registered are listed, not run).
        options: builder options as (name, value) pairs, e.g. (("shortcut", "B"),).
        reported: the paper's number where the card's does not apply (another paper's table).
        card_number: take the card's number when `reported` is None; False where the card's
            number is for other options (option B: the card's number is option A's).
        note: the paper column where there is no number, e.g. "curves only (Fig. 6)".
    """

    model: str
    options: tuple[tuple[str, object], ...] = ()
    reported: Reported | None = None
    card_number: bool = True
    note: str = ""

    @property
    def name(self) -> str:
        """The run's name: the model and its option values ("resnet20-B")."""
        return "-".join([self.model, *(str(value) for _, value in self.options)])

    def paper(self, num_classes: int = 10) -> Reported | None:
        """The paper's test error for this run on CIFAR-`num_classes`, if it reports one."""
        if self.reported is not None:
            return self.reported if num_classes == 10 else None
        if not self.card_number:
            return None
        try:
            card = model_card(self.model)
        except UnknownModelError:
            return None
        prefix = f"CIFAR-{num_classes} test error"
        found = next((r for r in card.reported if r.metric.startswith(prefix)), None)
        if found is None:
            return None
        author_year = card.paper.split(",")[0]  # "He et al. 2015"
        return Reported(found.metric, found.value, f"{author_year}, {found.source}")


@dataclass(frozen=True)
class Panel:
    """One panel of the curves figure: the runs drawn together."""

    title: str
    runs: tuple[str, ...]  # RunSpec names


@dataclass(frozen=True)
class Claim:
    """A finding of the paper, checked on the final errors (means over seeds).

    Reads: `run` ends with `relation` ("lower" | "higher") `metric` ("test" | "train") error
    than `other`; `finding` names it ("the degradation problem"), `source` says where.
    """

    run: str
    relation: str
    other: str
    metric: str
    finding: str
    source: str

    def __post_init__(self) -> None:
        check_choice("relation", self.relation, ("lower", "higher"))
        check_choice("metric", self.metric, ("test", "train"))


@dataclass(frozen=True)
class Experiment:
    """A paper experiment: its runs, figures and the findings the report checks."""

    name: str
    title: str
    source: str  # the papers' figures and tables
    runs: tuple[RunSpec, ...]
    panels: tuple[Panel, ...] = ()
    claims: tuple[Claim, ...] = ()
    figures: tuple[str, ...] = ("curves",)
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = [r.name for r in self.runs]
        if len(set(names)) != len(names):
            raise ValueError(f"experiment {self.name}: run names repeat: {names}")
        for figure in self.figures:
            check_choice("figure", figure, FIGURES)
        used = {n for p in self.panels for n in p.runs} | {
            n for c in self.claims for n in (c.run, c.other)
        }
        unknown = sorted(used - set(names))
        if unknown:
            raise ValueError(f"experiment {self.name}: panels or claims name no run: {unknown}")

    def run(self, name: str) -> RunSpec:
        """The run called `name`."""
        return next(r for r in self.runs if r.name == name)


@dataclass(frozen=True)
class SpeedExperiment:
    """A race to a training error: which network gets there in fewer iterations, each at the
    learning rate that makes it fastest (Krizhevsky et al. 2012, Fig. 1; see speed.py).

    Attributes:
        runs: the networks raced (seed 0 of each searches the grid; further seeds train the
            learning rate it chose).
        lrs: the learning-rate grid, ascending; the search starts in its middle and moves to
            untried neighbours of the fastest so far (iterations against learning rate are
            taken to have one minimum).
        threshold: the training error (%) to reach.
        ratio: (slower, faster) run names: the speed-up reported, iterations of the first
            over iterations of the second.
        paper_ratio: the paper's figure for that ratio; None: the first number on the model
            card of the ratio's faster run (read when asked, not at import).
        recipe: the recipe every run starts from (its lr replaced by the grid's, its steps a
            cap at which a run that has not reached the threshold stops).
        log_per_epoch: training-error measurements per epoch (each over the steps since the
            previous one); a run ends at the first at or below the threshold.
    """

    name: str
    title: str
    source: str
    runs: tuple[RunSpec, ...]
    lrs: tuple[float, ...]
    threshold: float
    ratio: tuple[str, str]
    recipe: str
    paper_ratio: Reported | None = None
    log_per_epoch: int = 10
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = [r.name for r in self.runs]
        if len(set(names)) != len(names):
            raise ValueError(f"experiment {self.name}: run names repeat: {names}")
        if not self.lrs or list(self.lrs) != sorted(set(self.lrs)) or self.lrs[0] <= 0:
            raise ValueError(f"experiment {self.name}: lrs must be positive and ascending")
        if not 0 < self.threshold < 100:
            raise ValueError(f"experiment {self.name}: threshold is a percentage")
        unknown = sorted(set(self.ratio) - set(names))
        if unknown:
            raise ValueError(f"experiment {self.name}: the ratio names no run: {unknown}")
        if self.log_per_epoch < 1:
            raise ValueError(f"experiment {self.name}: log_per_epoch must be at least 1")

    def run(self, name: str) -> RunSpec:
        """The run called `name`."""
        return next(r for r in self.runs if r.name == name)

    def paper(self) -> Reported | None:
        """The paper's ratio (`paper_ratio`, else from the card), with the paper named."""
        if self.paper_ratio is not None:
            return self.paper_ratio
        try:
            card = model_card(self.run(self.ratio[1]).model)
        except UnknownModelError:
            return None
        if not card.reported:
            return None
        found = card.reported[0]
        author_year = card.paper.split(",")[0]  # "Krizhevsky et al. 2012"
        return Reported(found.metric, found.value, f"{author_year}, {found.source}")


# Where the numbers and findings come from.
FIG1 = "He et al. 2015, Fig. 1"
FIG6 = "He et al. 2015, Fig. 6"
TABLE6 = "He et al. 2015, Table 6"
TABLE3 = "He et al. 2015, Table 3, on ImageNet"
PREACT_TABLE3 = "He et al. 2016, Table 3"

CIFAR10 = "CIFAR-10 test error (%)"
CURVES_ONLY = "curves only (Fig. 6 left)"
NOT_ON_CIFAR = "not on CIFAR (A vs B: ImageNet, Table 3)"
PROJECTIONS = "the small gain of projections"
PREACT = "the gain from pre-activation"
BOTTLENECK = "the gain from the deeper bottleneck net"

# The experiments are tables: fmt: off keeps their columns.
# fmt: off
DEGRADATION = Experiment(
    name="degradation",
    title="The degradation problem: plain and residual networks of 20 and 56 layers",
    source=f"{HE2015}, Fig. 1 and Fig. 6 (left: plain, middle: ResNet)",
    runs=(
        RunSpec("plain20", note=CURVES_ONLY),
        RunSpec("plain56", note=CURVES_ONLY),
        RunSpec("resnet20"),
        RunSpec("resnet56"),
    ),
    panels=(
        Panel("plain networks", ("plain20", "plain56")),
        Panel("residual networks", ("resnet20", "resnet56")),
    ),
    claims=(
        #      run         relation  other       metric   finding                        source
        Claim("plain56",  "higher", "plain20",  "train", "the degradation problem",      FIG1),
        Claim("resnet56", "lower",  "resnet20", "test",  "the gain from residual depth", TABLE6),
        Claim("resnet56", "lower",  "plain56",  "train", "easier optimisation",          FIG6),
    ),
    figures=("curves", "responses"),
)

DEPTH = Experiment(
    name="depth",
    title="Test error against depth: ResNets (Table 6) and plain nets (Fig. 6 left)",
    source=f"{HE2015}, Table 6 and Fig. 6",
    runs=(
        *(RunSpec(f"resnet{d}") for d in (20, 32, 44, 56, 110)),
        *(RunSpec(f"plain{d}", note=CURVES_ONLY) for d in (20, 32, 44, 56)),
    ),
    panels=(
        Panel("plain networks", tuple(f"plain{d}" for d in (20, 32, 44, 56))),
        Panel("residual networks", tuple(f"resnet{d}" for d in (20, 32, 44, 56, 110))),
    ),
    claims=(
        #      run          relation  other       metric  finding                         source
        Claim("resnet110", "lower",  "resnet20", "test", "the gain from residual depth", TABLE6),
        Claim("plain56",   "higher", "plain20",  "test", "the degradation problem",      FIG6),
    ),
    figures=("depth", "curves", "responses"),
    notes=(
        "He et al. 2015 give ResNet-110 as the best of 5 runs (6.43) with their mean "
        "6.61 +- 0.16; the mean is the figure to hold several seeds against.",
    ),
)

SHORTCUTS = Experiment(
    name="shortcuts",
    title="Shortcuts: option A vs B, and original vs pre-activation units",
    source=f"{HE2015}, section 3.3 and Table 3 (ImageNet); {HE2016}, Table 3",
    runs=(
        RunSpec("resnet20", (("shortcut", "A"),)),
        RunSpec("resnet20", (("shortcut", "B"),), card_number=False, note=NOT_ON_CIFAR),
        RunSpec("resnet56", (("shortcut", "A"),)),
        RunSpec("resnet56", (("shortcut", "B"),), card_number=False, note=NOT_ON_CIFAR),
        # He et al. 2016, Table 3, "original" unit: their ResNet-110 and the bottleneck
        # ResNet-164 with post-activation units.
        RunSpec("resnet110", reported=Reported(CIFAR10, 6.61, PREACT_TABLE3)),
        RunSpec("resnet164", reported=Reported(CIFAR10, 5.93, PREACT_TABLE3)),
        RunSpec("preact_resnet110"),
        RunSpec("preact_resnet164"),
    ),
    panels=(
        Panel("option A vs B", ("resnet20-A", "resnet20-B", "resnet56-A", "resnet56-B")),
        Panel("original vs pre-activation",
              ("resnet110", "resnet164", "preact_resnet110", "preact_resnet164")),
    ),
    claims=(
        #      run                relation other              metric  finding      source
        Claim("resnet20-B",       "lower", "resnet20-A",       "test", PROJECTIONS, TABLE3),
        Claim("resnet56-B",       "lower", "resnet56-A",       "test", PROJECTIONS, TABLE3),
        Claim("preact_resnet110", "lower", "resnet110",        "test", PREACT,      PREACT_TABLE3),
        Claim("preact_resnet164", "lower", "resnet164",        "test", PREACT,      PREACT_TABLE3),
        Claim("preact_resnet164", "lower", "preact_resnet110", "test", BOTTLENECK,  PREACT_TABLE3),
    ),
    notes=(
        "Option A pads the shortcut with zeros where the width doubles; option B projects it "
        "with a 1x1 convolution (He et al. 2015, section 3.3).",
    ),
)

# He et al. 2016, Tables 1 and 2: CIFAR-10 test error (%), the median of 5 runs (section 3.1).
# Read from two stored transcriptions of the paper's text (an English one, and an English and
# Chinese translation), which agree on every number below. Table 1's caption: 'We report
# "fail" when the test error is higher than 20%'; those rows have no number.
IM_TABLE1 = "He et al. 2016, Table 1"
IM_TABLE2 = "He et al. 2016, Table 2"
HE2016_TABLES = "He et al. 2016, Tables 1 and 2"
SV = "shortcut_variant"
IDENTITY_SHORTCUT = "the identity shortcut beats every other h(x)"
OPTIMIZATION = "optimization, not representation: a shortcut that can be the identity trains worse"
BIAS = "a gate's initial bias matters"
FULL_PREACT = "full pre-activation improves on the original unit"
BN_AFTER = "BN after addition hurts"
RELU_BEFORE = "ReLU before addition hurts"
BN_PREACT = "BN with the pre-activation ReLU helps"
SECTION32 = "He et al. 2016, section 3.2 and Fig. 3"
FAIL = "fail: above 20% (He et al. 2016, Table 1)"


def _t1(error: float, case: str = "") -> Reported:
    return Reported(CIFAR10, error, f"{IM_TABLE1}{', ' if case else ''}{case}")


def _t2(error: float) -> Reported:
    return Reported(CIFAR10, error, IM_TABLE2)


# Table 1's shortcuts and Table 2's units as they follow the network's name in a run's name.
SHORTCUT_RUNS = ("constant-scaling", "exclusive-gating", "shortcut-only-gating",
                 "shortcut-only-gating-0", "conv1x1", "dropout")  # fmt: skip
UNIT_RUNS = ("bn-after-addition", "relu-before-addition", "relu-preact", "full-preact")
UNIT_NETS = ("resnet110", "resnet164")

IDENTITY_MAPPINGS = Experiment(
    name="identity-mappings",
    title="Identity mappings: the shortcut h(x) (Table 1) and the order of BN and ReLU (Table 2)",
    source=f"{HE2016}, Tables 1 and 2 (Fig. 2 and Fig. 4)",
    runs=(
        # Table 1, ResNet-110; its baseline is Table 2's original unit too.
        #       model        options                                  paper
        RunSpec("resnet110", reported=Reported(CIFAR10, 6.61, HE2016_TABLES)),
        RunSpec("resnet110", ((SV, "constant-scaling"),),             _t1(12.35, "F times 0.5")),
        RunSpec("resnet110", ((SV, "exclusive-gating"),),             _t1(8.70, "init b_g = -6")),
        RunSpec("resnet110", ((SV, "shortcut-only-gating"),),         _t1(6.91, "init b_g = -6")),
        RunSpec("resnet110", ((SV, "shortcut-only-gating"), ("gate_bias", 0)),
                                                                      _t1(12.86, "init b_g = 0")),
        RunSpec("resnet110", ((SV, "conv1x1"),),                      _t1(12.22)),
        RunSpec("resnet110", ((SV, "dropout"),), card_number=False, note=FAIL),
        # Table 2, ResNet-110 and ResNet-164.
        RunSpec("resnet110", (("unit", "bn-after-addition"),),        _t2(8.17)),
        RunSpec("resnet110", (("unit", "relu-before-addition"),),     _t2(7.84)),
        RunSpec("resnet110", (("unit", "relu-preact"),),              _t2(6.71)),
        RunSpec("resnet110", (("unit", "full-preact"),),              _t2(6.37)),
        RunSpec("resnet164", reported=_t2(5.93)),
        RunSpec("resnet164", (("unit", "bn-after-addition"),),        _t2(6.50)),
        RunSpec("resnet164", (("unit", "relu-before-addition"),),     _t2(6.14)),
        RunSpec("resnet164", (("unit", "relu-preact"),),              _t2(5.91)),
        RunSpec("resnet164", (("unit", "full-preact"),),              _t2(5.46)),
    ),
    panels=(
        Panel("shortcuts, ResNet-110 (Table 1)",
              ("resnet110", *(f"resnet110-{v}" for v in SHORTCUT_RUNS))),
        *(Panel(f"units, ResNet-{net[6:]} (Table 2)", (net, *(f"{net}-{u}" for u in UNIT_RUNS)))
          for net in UNIT_NETS),
    ),
    claims=(
        # Table 1 and section 3.2: the identity shortcut against each other h(x).
        *(Claim("resnet110", "lower", f"resnet110-{v}", "test", IDENTITY_SHORTCUT, IM_TABLE1)
          for v in SHORTCUT_RUNS),
        Claim("resnet110-shortcut-only-gating", "lower", "resnet110-shortcut-only-gating-0",
              "test", BIAS, IM_TABLE1),
        Claim("resnet110-conv1x1", "higher", "resnet110", "train", OPTIMIZATION, SECTION32),
        Claim("resnet110-shortcut-only-gating-0", "higher", "resnet110", "train", OPTIMIZATION,
              SECTION32),
        # Table 2, on both networks.
        *(Claim(f"{net}-full-preact", "lower", net, "test", FULL_PREACT, IM_TABLE2)
          for net in UNIT_NETS),
        *(Claim(net, "lower", f"{net}-bn-after-addition", "test", BN_AFTER, IM_TABLE2)
          for net in UNIT_NETS),
        *(Claim(net, "lower", f"{net}-relu-before-addition", "test", RELU_BEFORE, IM_TABLE2)
          for net in UNIT_NETS),
        *(Claim(f"{net}-full-preact", "lower", f"{net}-relu-preact", "test", BN_PREACT, IM_TABLE2)
          for net in UNIT_NETS),
    ),
    notes=(
        "The paper's numbers are medians of 5 runs (section 3.1); ours are the mean over "
        "--seeds.",
        "Every shortcut variant is applied to all 54 units (Table 1: 'applied to all Residual "
        "Units'), the two where the width doubles on top of their zero-padding shortcut; see "
        "cnnlab.models.identity_mappings for the details the paper fixes and those it leaves "
        "open.",
        "Rows of Table 1 not run here: constant scaling with F not scaled (0.5 on the shortcut, "
        "1 on F): fail; 0 on the shortcut, 'a plain net' (plain110): fail; exclusive gating "
        "with b_g initialized at 0 to -5: fail, and at -7: 9.81 (`-O gate_bias=-7`).",
        "He et al. 2016 train as He et al. 2015 but warm up every CIFAR run at lr 0.01 for "
        "its first 400 iterations (appendix); the he2015 recipe keeps He et al. 2015's warm-up "
        "of the 110-layer net, lr 0.01 until the training error is below 80% (section 4.2), "
        "and gives it to ResNet-164 too.",
    ),
)
# fmt: on

# Krizhevsky et al. 2012, section 3.1: "A four-layer convolutional neural network with ReLUs
# (solid line) reaches a 25% training error rate on CIFAR-10 six times faster than an
# equivalent network with tanh neurons (dashed line). The learning rates for each network
# were chosen independently to make training as fast as possible. No regularization of any
# kind was employed." The paper's number is on convnet4's card.
# The grid: factors of 2 from 0.0025 to 0.16 around 0.02, where the search starts (with
# momentum 0.9, a step of about 0.2 times the gradient; a usual rate for a network without
# batch normalisation, with variance-keeping initialisation and standardised inputs).
RELU = RunSpec("convnet4", (("activation", "relu"),))
TANH = RunSpec("convnet4", (("activation", "tanh"),))
RELU_VS_TANH = SpeedExperiment(
    name="relu-vs-tanh",
    title="ReLU against tanh: iterations to 25% training error on CIFAR-10",
    source="Krizhevsky et al. 2012, section 3.1 and Fig. 1",
    runs=(RELU, TANH),
    lrs=(0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16),
    threshold=25.0,
    ratio=(TANH.name, RELU.name),
    recipe="relu2012",
    notes=(
        "The paper gives no exact architecture for its four-layer network: convnet4 is "
        "cuda-convnet's layers-18pct (Krizhevsky's four-layer CIFAR-10 network of the time) "
        "without its response normalisation, initialised with each activation's gain "
        "(models/alexnet_cifar.py).",
    ),
)

EXPERIMENTS: dict[str, Experiment | SpeedExperiment] = {
    e.name: e for e in (DEGRADATION, DEPTH, SHORTCUTS, IDENTITY_MAPPINGS, RELU_VS_TANH)
}


def get_experiment(name: str) -> Experiment | SpeedExperiment:
    """A named experiment ("degradation", "depth", "shortcuts", "identity-mappings",
    "relu-vs-tanh").

    Raises:
        ValueError: not an experiment; the message lists them.
    """
    check_choice("experiment", name, tuple(EXPERIMENTS))
    return EXPERIMENTS[name]
