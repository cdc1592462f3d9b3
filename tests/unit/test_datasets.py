"""Builtin and synthetic datasets, splits, schedules."""

from __future__ import annotations

import math

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
