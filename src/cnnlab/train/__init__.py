"""Training and evaluation: named recipes, one readable loop, atomic checkpoints.

Recipe, get_recipe(name), RECIPES   he2015 (He et al. 2015, section 4.2) and fast (ours)
learning_rate(recipe, step)         the schedule, step by step
train(model, train_data, recipe)    the loop on in-memory data; a run folder if `out`
train_from_spec(model, data, out)   what `cnnlab train` does: load the splits, then train
evaluate_checkpoint(path, data)     top-1 / top-5 error; evaluate_from_spec for a spec
predict(path, images)               most probable classes of the user's own image files
save_checkpoint, load_checkpoint    plain data, atomic writes, weights_only loading
CheckpointError, TrainingDiverged   the errors a user can act on
"""

from cnnlab.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from cnnlab.train.evaluate import (
    EvalResult,
    Prediction,
    evaluate,
    evaluate_checkpoint,
    load_model,
    predict,
)
from cnnlab.train.loop import TrainingDiverged, TrainResult, train
from cnnlab.train.recipes import FAST, HE2015, RECIPES, Recipe, get_recipe
from cnnlab.train.runs import evaluate_from_spec, parse_options, train_from_spec
from cnnlab.train.schedules import SlowStart, learning_rate

__all__ = [
    "FAST",
    "HE2015",
    "RECIPES",
    "CheckpointError",
    "EvalResult",
    "Prediction",
    "Recipe",
    "SlowStart",
    "TrainResult",
    "TrainingDiverged",
    "evaluate",
    "evaluate_checkpoint",
    "evaluate_from_spec",
    "get_recipe",
    "learning_rate",
    "load_checkpoint",
    "load_model",
    "parse_options",
    "predict",
    "save_checkpoint",
    "train",
    "train_from_spec",
]
