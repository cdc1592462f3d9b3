"""Builtin and synthetic datasets, splits, schedules."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from app.core.catalog import BUILTIN_DATASETS
from app.core.spec import DatasetSpec, ScheduleSpec
from workers import datasets
from workers.schedules import lr_at


@pytest.mark.parametrize("name", list(BUILTIN_DATASETS))
def test_builtin_datasets_match_the_catalog(name: str) -> None:
    meta = BUILTIN_DATASETS[name]
    data = datasets.load(DatasetSpec(builtin=name, validation_split=0.25))
    assert data.sample_shape == meta.sample_shape and data.task == meta.task
    assert len(data.x_train) + len(data.x_val) == meta.n_samples
    assert abs(len(data.x_val) - 0.25 * meta.n_samples) <= 1
    if meta.task == "classification":
        assert data.num_outputs == meta.num_classes
    else:
        assert data.y_train.shape[1] == 1 and data.num_outputs == 1


@pytest.mark.parametrize("name", sorted(set(BUILTIN_DATASETS) - {"synthetic"}))
def test_builtins_read_from_scikit_learns_files_equal_its_loaders(name: str) -> None:
    """A runner reads the builtin sets from the files scikit-learn ships, without importing
    it; the arrays and class names are its loaders' own, bit for bit."""
    got, expected = datasets._sklearn_files(name), datasets._sklearn_loader(name)
    for a, b in zip(got[:2], expected[:2], strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    assert got[2] == expected[2]


def test_a_runner_start_imports_no_scikit_learn() -> None:
    """Importing scikit-learn (and SciPy) costs a runner's start about what torch does."""
    code = ("import sys; import workers.runner as r; from workers import datasets; "
            "r.preload('pytorch'); datasets._sklearn('digits'); "
            "assert 'sklearn' not in sys.modules and 'scipy' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_split_is_seeded() -> None:
    a = datasets.load(DatasetSpec(builtin="iris", seed=1))
    b = datasets.load(DatasetSpec(builtin="iris", seed=1))
    c = datasets.load(DatasetSpec(builtin="iris", seed=2))
    assert np.array_equal(a.x_val, b.x_val) and not np.array_equal(a.x_val, c.x_val)


@pytest.mark.parametrize("shape", [[20], [12, 10, 3]])
def test_synthetic_is_seeded_and_learnable(shape: list[int]) -> None:
    x, y = datasets.synthetic(2000, shape, 4, seed=0)
    x2, _ = datasets.synthetic(2000, shape, 4, seed=0)
    assert x.shape == (2000, *shape) and x.dtype == np.float32 and np.array_equal(x, x2)
    # Nearest class mean separates the classes far above chance (0.25).
    flat = x.reshape(len(x), -1)
    means = np.stack([flat[y == k].mean(0) for k in range(4)])
    pred = ((flat[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    assert (pred == y).mean() > 0.9


def test_input_stats_per_feature_and_per_channel() -> None:
    mean, std = datasets.input_stats(np.ones((10, 5), np.float32))
    assert mean.shape == (5,) and np.all(std == 1.0)  # constant features keep std 1
    mean, std = datasets.input_stats(np.random.rand(10, 4, 4, 3).astype(np.float32))
    assert mean.shape == (1, 1, 3)


def test_schedules() -> None:
    cos = ScheduleSpec(name="cosine")
    assert lr_at(cos, 1.0, 0, 10) == 1.0
    assert math.isclose(lr_at(cos, 1.0, 5, 10), 0.5)
    step = ScheduleSpec(name="step", step_size=2, gamma=0.5)
    assert [lr_at(step, 1.0, e, 6) for e in range(6)] == [1, 1, 0.5, 0.5, 0.25, 0.25]
    warm = ScheduleSpec(name="constant", warmup_epochs=3)
    assert [lr_at(warm, 1.0, e, 6) for e in range(4)] == [0.25, 0.5, 0.75, 1.0]
