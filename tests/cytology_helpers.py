"""Tiny mosaic slide sets and a tiny two-stage cytology model trained on them, for tests of
the cytology task through every command (slides of real CRIC cells, about 20 s in all)."""

from __future__ import annotations

from pathlib import Path

from medinfer.apps.slides import SetPlan, make_slide_sets
from medinfer.artifact import ModelArtifact
from medinfer.train import CytologyConfig, fit
from medinfer.train.cytology import CytologyRecipe

TINY_SETS = {"train": SetPlan(2, 2, 1024, 0.1), "val": SetPlan(2, 2, 1024, 0.05),
             "test": SetPlan(1, 1, 1024, 0.05)}
"""Two normal and two abnormal 1024^2 slides to train and to validate on, one of each to test."""


def tiny_slides(root: Path, crops: Path) -> Path:
    make_slide_sets(root, crops, TINY_SETS, seed=3, progress=False)
    return root


def train_tiny_cytology(data: Path, out: Path, epochs: int = 2, stage2_epochs: int = 1) -> ModelArtifact:
    """Stage 1 on 32-pixel tiles (64 level-0 pixels), stage 2 on 64-pixel regions."""
    cfg = CytologyConfig(data=data, out=out, epochs=epochs, batch_size=16, negatives_per_slide=16,
                         arch_kwargs={"depth": 10, "width": 4}, stage2_epochs=stage2_epochs,
                         stage2_arch_kwargs={"channels": (4, 8, 16, 32)}, stage2_side=64,
                         stage2_negatives=2, val_every=1, prefetch=0,
                         preprocessing={"size": (32, 32)}, cytology={"stage2": "stage2", "regions": 4})
    fit(CytologyRecipe(), cfg, "tests")
    return ModelArtifact.load(out)
