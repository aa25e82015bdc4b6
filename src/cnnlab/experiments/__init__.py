"""The papers' CIFAR-10 experiments, run and reported: `cnnlab experiment NAME`.

    EXPERIMENTS, get_experiment(name)   degradation, depth, shortcuts, identity-mappings: runs,
                                        panels, findings; relu-vs-tanh: a race to 25%
                                        training error
    run_experiment(name, data, out)     train every run of every seed (resumable), then report
    write_report(experiment, out, ...)  report.md and PNG figures from the run folders
    speed.py                            the race: learning-rate search, iterations to an
                                        error, their ratio (Krizhevsky et al. 2012, Fig. 1)

See definitions.py for what each experiment trains and which papers' numbers it compares with.
"""

from cnnlab.experiments.definitions import (
    EXPERIMENTS,
    Claim,
    Experiment,
    Panel,
    RunSpec,
    SpeedExperiment,
    get_experiment,
)
from cnnlab.experiments.report import Settings, Stat, claim_sentence, mean_std, write_report
from cnnlab.experiments.run import make_recipe, run_experiment
from cnnlab.experiments.speed import (
    Outcome,
    allowed_steps,
    fastest,
    next_lr,
    ratio_sentence,
    steps_to_error,
)

__all__ = [
    "EXPERIMENTS",
    "Claim",
    "Experiment",
    "Panel",
    "Outcome",
    "RunSpec",
    "Settings",
    "SpeedExperiment",
    "Stat",
    "allowed_steps",
    "claim_sentence",
    "fastest",
    "get_experiment",
    "make_recipe",
    "mean_std",
    "next_lr",
    "ratio_sentence",
    "run_experiment",
    "steps_to_error",
    "write_report",
]
