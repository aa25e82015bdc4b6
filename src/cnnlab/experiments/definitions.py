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

EXPERIMENTS: dict[str, Experiment] = {
    e.name: e for e in (DEGRADATION, DEPTH, SHORTCUTS, IDENTITY_MAPPINGS)
}


def get_experiment(name: str) -> Experiment:
    """A named experiment ("degradation", "depth", "shortcuts", "identity-mappings").

    Raises:
        ValueError: not an experiment; the message lists them.
    """
    check_choice("experiment", name, tuple(EXPERIMENTS))
    return EXPERIMENTS[name]
