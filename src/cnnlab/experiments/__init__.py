"""The papers' CIFAR-10 experiments, run and reported: `cnnlab experiment NAME`.

    EXPERIMENTS, get_experiment(name)   degradation, depth, shortcuts, identity-mappings: runs,
                                        panels, findings
    run_experiment(name, data, out)     train every run of every seed (resumable), then report
    write_report(experiment, out, ...)  report.md and PNG figures from the run folders

See definitions.py for what each experiment trains and which papers' numbers it compares with.
"""

from cnnlab.experiments.definitions import (
    EXPERIMENTS,
    Claim,
    Experiment,
    Panel,
    RunSpec,
    get_experiment,
)
from cnnlab.experiments.report import Settings, Stat, claim_sentence, mean_std, write_report
from cnnlab.experiments.run import make_recipe, run_experiment

__all__ = [
    "EXPERIMENTS",
    "Claim",
    "Experiment",
    "Panel",
    "RunSpec",
    "Settings",
    "Stat",
    "claim_sentence",
    "get_experiment",
    "make_recipe",
    "mean_std",
    "run_experiment",
    "write_report",
]
