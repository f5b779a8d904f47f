"""Training: one loop (:func:`fit`) for every task, per-task recipes, validated configs.

Run a config with :func:`run_training` (or :func:`fit` with an explicit recipe); read one
from YAML with :func:`medinfer.train.cli_config.load_config`.
"""

from medinfer.train.config import (
    AnyTrainConfig,
    ClassifyConfig,
    CytologyConfig,
    DetectConfig,
    FitConfig,
    TrainConfig,
    VolumeTrainConfig,
)
from medinfer.train.fit import FitResult, fit, run_training
from medinfer.train.cytology import CellRecipe, CytologyRecipe
from medinfer.train.detect import CandidateRecipe, DetectionRecipe
from medinfer.train.recipes import RECIPES, Recipe, recipe_for

RECIPES[DetectionRecipe.task] = DetectionRecipe()
RECIPES[CytologyRecipe.task] = CytologyRecipe()

__all__ = ["RECIPES", "AnyTrainConfig", "CandidateRecipe", "CellRecipe", "CytologyConfig", "CytologyRecipe", "ClassifyConfig", "DetectConfig", "DetectionRecipe", "FitConfig", "FitResult", "Recipe", "TrainConfig",
           "VolumeTrainConfig", "fit", "recipe_for", "run_training"]
