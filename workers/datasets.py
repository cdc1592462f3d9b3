"""Datasets as numpy arrays: scikit-learn's bundled sets, seeded synthetic data, and the split."""

from __future__ import annotations

import gzip
import importlib.util
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from app.core.catalog import BUILTIN_DATASETS, SYNTHETIC
from app.core.dataset_arrays import read_normalised
from app.core.spec import DatasetSpec
from workers.errors import UserError
from workers.phases import PHASES

# Dataset id -> its normalised npz, opened for reading (workers.dataset_cache.fetcher).
Fetch = Callable[[str], IO[bytes]]


@dataclass
class Dataset:
    """Training and validation arrays as the user's data holds them (images NHWC)."""

    name: str
    task: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    class_names: list[str]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_outputs(self) -> int:
        """Logits per class, or one unit per regression target."""
        return self.num_classes if self.task == "classification" else int(self.y_train.shape[1])

    @property
    def input_dtype(self) -> str:
        return str(self.x_train.dtype)


Arrays = tuple[np.ndarray, np.ndarray, list[str]]
# Builtin name -> scikit-learn's bundled file and whether its first row is a header
# (n_samples, n_features, class names); the target is each row's last column.
SKLEARN_FILES = {"iris": ("iris.csv", True), "wine": ("wine_data.csv", True),
                 "breast_cancer": ("breast_cancer.csv", True),
                 "digits": ("digits.csv.gz", False)}


def _sklearn(name: str) -> Arrays:
    """A builtin dataset as scikit-learn ships it: read from the files its package holds,
    without importing it (scikit-learn and SciPy cost a runner's start about what torch
    does); by its loader if they are not where they have always been.
    tests/unit/test_datasets.py checks both give the same arrays."""
    try:
        return _sklearn_files(name)
    except OSError:
        return _sklearn_loader(name)


def _sklearn_files(name: str) -> Arrays:
    spec = importlib.util.find_spec("sklearn")  # finds the package; runs none of it
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-learn is not installed")
    data = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    if name == "diabetes":  # scaled as load_diabetes(scaled=True) scales it
        x = np.loadtxt(data / "diabetes_data_raw.csv.gz")
        mean, std = x.mean(axis=0), x.std(axis=0)
        x -= mean
        _recentre(x)  # as sklearn.preprocessing.scale does, after each step
        x /= std
        _recentre(x)
        x /= x.shape[0] ** 0.5
        y = np.loadtxt(data / "diabetes_target.csv.gz")
        return x.astype(np.float32), y.astype(np.float32).reshape(-1, 1), []
    file, header = SKLEARN_FILES[name]
    with (data / file).open("rb") as raw, \
            (gzip.open(raw, "rt") if file.endswith(".gz") else io.TextIOWrapper(raw)) as text:
        first = text.readline().strip().split(",") if header else []
        table = np.loadtxt(text, delimiter=",", ndmin=2)
    names = first[2:] if header else [str(c) for c in range(int(table[:, -1].max()) + 1)]
    return (table[:, :-1].astype(np.float32), table[:, -1].astype(np.int64), names)


def _recentre(x: np.ndarray) -> None:
    if not np.allclose(x.mean(axis=0), 0):
        x -= x.mean(axis=0)


def _sklearn_loader(name: str) -> Arrays:
    from sklearn import datasets as sk

    loader = {"digits": sk.load_digits, "iris": sk.load_iris, "wine": sk.load_wine,
              "breast_cancer": sk.load_breast_cancer, "diabetes": sk.load_diabetes}[name]
    bunch = loader()
    x = np.asarray(bunch.data, dtype=np.float32)
    if BUILTIN_DATASETS[name].task == "regression":
        return x, np.asarray(bunch.target, dtype=np.float32).reshape(-1, 1), []
    names = [str(n) for n in getattr(bunch, "target_names", range(int(bunch.target.max()) + 1))]
    return x, np.asarray(bunch.target, dtype=np.int64), names


def synthetic(n_samples: int, sample_shape: list[int], num_classes: int,
              seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable classification data: a smooth random prototype per class plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, size=n_samples).astype(np.int64)
    if len(sample_shape) == 1:
        prototypes = rng.normal(0.0, 1.0, size=(num_classes, sample_shape[0]))
    else:
        h, w, c = sample_shape
        # Low-resolution patterns blown up to the image size: spatial structure a
        # conv net can use, not just per-pixel noise.
        lh, lw = max(1, h // 4), max(1, w // 4)
        coarse = rng.normal(0.0, 1.0, size=(num_classes, lh, lw, c))
        rows = np.minimum(np.arange(h) * lh // h, lh - 1)
        cols = np.minimum(np.arange(w) * lw // w, lw - 1)
        prototypes = coarse[:, rows][:, :, cols]
    x = np.empty((n_samples, *sample_shape), dtype=np.float32)
    # Chunks of about 64 MB of float64 noise, whatever a sample's size: generation holds
    # little beyond x itself (the memory estimate counts x, app/core/estimate.py). The
    # values do not depend on the chunking: the generator draws them in order.
    step = max(1, (64 << 20) // (8 * math.prod(sample_shape)))
    for start in range(0, n_samples, step):
        stop = min(start + step, n_samples)
        noise = rng.normal(0.0, 1.0, size=(stop - start, *sample_shape))
        x[start:stop] = prototypes[y[start:stop]] + noise
    return x, y


def split(x: np.ndarray, y: np.ndarray, fraction: float,
          seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A seeded random split into (train, validation)."""
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = int(round(len(x) * fraction))
    if fraction > 0 and n_val == 0:
        n_val = 1
    if len(x) - n_val < 1:
        raise UserError("the validation split leaves no training samples")
    val, train = order[:n_val], order[n_val:]
    return x[train], y[train], x[val], y[val]


def load(spec: DatasetSpec, fetch: Fetch | None = None) -> Dataset:
    """Load the dataset a job names, split as the spec says; fetch opens uploaded ones."""
    data = _load(spec, fetch)
    PHASES.mark("data_ready")  # a runner's start phases (workers/phases.py)
    return data


def _load(spec: DatasetSpec, fetch: Fetch | None) -> Dataset:
    if spec.id is not None:
        if fetch is None:
            raise UserError(f"dataset {spec.id} is an upload, and this runner cannot fetch uploads")
        return uploaded(spec, fetch)
    if spec.builtin == SYNTHETIC:
        assert spec.n_samples and spec.sample_shape and spec.num_classes
        x, y = synthetic(spec.n_samples, spec.sample_shape, spec.num_classes, spec.seed)
        names = [str(i) for i in range(spec.num_classes)]
        task = "classification"
    else:
        assert spec.builtin is not None
        x, y, names = _sklearn(spec.builtin)
        task = BUILTIN_DATASETS[spec.builtin].task
    x_train, y_train, x_val, y_val = split(x, y, spec.validation_split, spec.seed)
    return Dataset(spec.builtin, task, x_train, y_train, x_val, y_val, names)


def uploaded(spec: DatasetSpec, fetch: Fetch) -> Dataset:
    """An uploaded dataset; its own x_val and y_val, when it has them, are the validation split."""
    assert spec.id is not None
    with fetch(spec.id) as f:
        data = read_normalised(f)
    if data.x_val is not None and data.y_val is not None:
        x_train, y_train, x_val, y_val = data.x, data.y, data.x_val, data.y_val
    else:
        x_train, y_train, x_val, y_val = split(data.x, data.y, spec.validation_split, spec.seed)
    return Dataset(spec.id, data.task, x_train, y_train, x_val, y_val, data.class_names)


def input_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std the model normalises raw inputs with: per feature, or per channel for images.

    Shapes broadcast against one sample, so both frameworks bake the same numbers in.
    """
    axes = (0,) if x.ndim == 2 else tuple(range(x.ndim - 1))
    mean = x.mean(axis=axes, dtype=np.float64, keepdims=True)[0]
    std = x.std(axis=axes, dtype=np.float64, keepdims=True)[0]
    std = np.where(std < 1e-6, 1.0, std)  # constant features (digits' border pixels)
    return mean.astype(np.float32), std.astype(np.float32)


def target_stats(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of regression targets; the model's output layer undoes them."""
    mean = y.mean(axis=0, dtype=np.float64)
    std = y.std(axis=0, dtype=np.float64)
    std = np.where(std < 1e-6, 1.0, std)
    return mean.astype(np.float32), std.astype(np.float32)
