"""What the builtin datasets are, known without loading them (the API imports no numpy data)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BuiltinDataset:
    name: str
    task: str  # classification | regression
    n_samples: int
    sample_shape: tuple[int, ...]
    num_classes: int  # 0 for regression
    description: str


BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    d.name: d
    for d in (
        BuiltinDataset("digits", "classification", 1797, (64,), 10,
                       "scikit-learn 8x8 handwritten digits, pixel values 0-16, flattened"),
        BuiltinDataset("iris", "classification", 150, (4,), 3, "scikit-learn iris flowers"),
        BuiltinDataset("wine", "classification", 178, (13,), 3, "scikit-learn wine cultivars"),
        BuiltinDataset("breast_cancer", "classification", 569, (30,), 2,
                       "scikit-learn Wisconsin breast cancer"),
        BuiltinDataset("diabetes", "regression", 442, (10,), 0,
                       "scikit-learn diabetes progression (one regression target)"),
    )
}

SYNTHETIC = "synthetic"
BUILTIN_NAMES = (*BUILTIN_DATASETS, SYNTHETIC)
