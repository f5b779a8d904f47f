"""A task from outside the library: "is this picture bright?", on a folder of
``images/`` + ``bright.csv`` (name,label). It exists to show the extension point: one
Task subclass plus ``register_task``, and every command handles it unchanged."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image as PILImage

from medinfer.artifact import ArtifactSpec, InputSpec, ModelArtifact
from medinfer.data.preprocess import prepare_batch
from medinfer.data.spec import Preprocessing
from medinfer.io import Image, read_image
from medinfer.tasks import PictureTask, Prediction, WriteOptions, WrittenFile

TASK = "test_brightness"


@dataclass
class BrightSet:
    names: list[str]
    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, index):
        return BrightSet([self.names[i] for i in index], self.images[index], self.labels[index])


class Brightness(PictureTask):
    name: ClassVar[str] = TASK
    primary: ClassVar[str] = "accuracy"
    columns: ClassVar[tuple[tuple[str, str], ...]] = (("accuracy", "accuracy"), ("margin", "margin"))
    layout: ClassVar[str] = "images/ + bright.csv"

    @classmethod
    def handles(cls, art: ModelArtifact) -> bool:
        return art.spec.task == TASK

    def is_layout(self, folder: Path) -> bool:
        return (Path(folder) / "bright.csv").is_file()

    def load_eval(self, folder: Path, limit: int | None = None) -> BrightSet:
        rows = list(csv.reader((Path(folder) / "bright.csv").open()))[: limit or None]
        images = prepare_batch([read_image(Path(folder) / "images" / n).array for n, _ in rows], self.spec)
        return BrightSet([n for n, _ in rows], images, np.array([int(v) for _, v in rows]))

    def postprocess(self, outputs: np.ndarray, image: Image) -> Prediction:
        score = float(np.asarray(outputs).reshape(-1)[0])
        return Prediction(TASK, extra={"bright_score": score, "bright": score > 0})

    def metrics(self, outputs, data: BrightSet, n_boot: int = 0) -> dict[str, Any]:
        s = np.array([float(np.asarray(o).reshape(-1)[0]) for o in outputs])
        return {"accuracy": float(((s > 0) == (data.labels > 0)).mean()),
                "margin": float(np.abs(s).mean()), "n": float(len(s))}

    def write_files(self, pred: Prediction, image: Image, out_dir: Path,
                    options: WriteOptions) -> list[WrittenFile]:
        path = out_dir / options.name("bright.json")
        path.write_text(json.dumps({"bright": pred.extra["bright"]}))
        return [WrittenFile("bright", path, "application/json")]


def make_bright_data(root: Path, n: int = 12, side: int = 20) -> Path:
    """``n`` greyscale PNGs, alternately dark and bright, with their labels."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        level = 200 if i % 2 else 40
        pixels = np.clip(rng.normal(level, 20, (side, side)), 0, 255).astype(np.uint8)
        PILImage.fromarray(pixels, "L").save(root / "images" / f"{i}.png")
        rows.append(f"{i}.png,{i % 2}")
    (root / "bright.csv").write_text("\n".join(rows) + "\n")
    return root


def make_bright_artifact(root: Path) -> ModelArtifact:
    """A tiny DenseNet with one output; its weights are fitted to the task so the metric means
    something (a few steps on the synthetic data)."""
    import torch

    spec = ArtifactSpec(task=TASK, architecture="test_densenet", in_channels=1, out_channels=1,
                        input=InputSpec(channels=1, spatial=(16, 16)),
                        preprocessing=Preprocessing(size=(16, 16), channels=1, mean=(0.5,), std=(0.25,)))
    art = ModelArtifact(root, spec)
    torch.manual_seed(0)
    net = art.build_network()
    data = Brightness(art).load_eval(make_bright_data(root.parent / "train"))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, y = torch.from_numpy(data.images), torch.from_numpy(data.labels).float()[:, None]
    for _ in range(30):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    art.save_weights(net.eval())
    art.save()
    return art
