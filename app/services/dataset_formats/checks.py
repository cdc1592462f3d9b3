"""Checks every format shares: features, finite numbers, labels and targets -> DatasetArrays."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from app.core.dataset_arrays import DatasetArrays
from app.core.errors import InvalidInput, problem

if TYPE_CHECKING:
    from app.services.dataset_formats.archive import UploadBounds

MAX_CLASSES = 1000
NPZ_ARRAYS = ("x", "y", "x_val", "y_val")


def rejected(message: str, loc: tuple[str | int, ...] = ("file",)) -> InvalidInput:
    """A 422 naming what is wrong with the upload (or one of its form fields)."""
    return InvalidInput([problem(loc, message, "invalid_dataset")])


def _features(x: np.ndarray, name: str, bounds: UploadBounds) -> np.ndarray:
    """x as the model will take it: uint8 stays uint8, other numbers become float32."""
    if x.ndim not in (2, 4):
        raise rejected(f"{name} has shape {list(x.shape)}; it must be (N, D) vectors or "
                       "(N, H, W, C) images (add a channel axis to grayscale images)")
    if x.dtype.kind not in "biuf":
        raise rejected(f"{name} has dtype {x.dtype}; features must be numbers")
    if len(x) == 0:
        raise rejected(f"{name} holds no samples")
    elements = math.prod(x.shape[1:])
    if elements == 0 or elements > bounds.max_sample_elements:
        raise rejected(f"{name} has {elements} values per sample; this service takes 1 to "
                       f"{bounds.max_sample_elements}")
    if x.dtype == np.uint8:
        return x
    x = x.astype(np.float32, copy=False)
    _finite(x, name)
    return x


def _finite(a: np.ndarray, name: str) -> None:
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        raise rejected(f"{name} has {bad} NaN or infinite value(s); clean or drop those samples")


def _label_name(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return str(int(value))
    return str(value.item() if isinstance(value, np.generic) else value)


def _encode_labels(raw: np.ndarray, raw_val: np.ndarray | None,
                   names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Labels -> class indices 0..K-1 in sorted label order, and the class names."""
    labels: list[np.ndarray | None] = []
    for a, name in ((raw, names[0]), (raw_val, names[1])):
        if a is None:
            labels.append(None)
            continue
        if a.ndim == 2 and a.shape[1] == 1:
            a = a[:, 0]
        if a.ndim != 1:
            raise rejected(f"{name} has shape {list(a.shape)}; classification labels are one "
                           "per sample, shape (N,)")
        if a.dtype.kind not in "biufU":
            raise rejected(f"{name} has dtype {a.dtype}; labels must be numbers or strings")
        if a.dtype.kind == "f":
            _finite(a, name)
            if not np.array_equal(a, np.round(a)):
                raise rejected(f"{name} has non-integer values, which are not class labels; for "
                               "regression set the form field task=regression")
        labels.append(a)
    y, y_val = labels
    assert y is not None
    if y_val is not None and (y.dtype.kind == "U") != (y_val.dtype.kind == "U"):
        raise rejected(f"{names[1]} and {names[0]} must both be strings or both be numbers")
    classes = np.unique(y)
    if len(classes) < 2:
        raise rejected(f"{names[0]} has a single class ({_label_name(classes[0])!r}); a "
                       "classifier needs at least two")
    if len(classes) > MAX_CLASSES:
        raise rejected(f"{names[0]} has {len(classes)} classes; this service takes at most "
                       f"{MAX_CLASSES}")
    codes_val = None
    if y_val is not None:
        unknown = np.setdiff1d(np.unique(y_val), classes)
        if len(unknown):
            raise rejected(f"{names[1]} has label {_label_name(unknown[0])!r}, which "
                           f"{names[0]} does not have")
        codes_val = np.searchsorted(classes, y_val).astype(np.int64)
    codes = np.searchsorted(classes, y).astype(np.int64)
    return codes, codes_val, [_label_name(c) for c in classes]


def _targets(y: np.ndarray, name: str) -> np.ndarray:
    """Regression targets as float32 (N, T)."""
    if y.dtype.kind not in "biuf":
        raise rejected(f"{name} has dtype {y.dtype}; regression targets must be numbers")
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2:
        raise rejected(f"{name} has shape {list(y.shape)}; regression targets are (N,) or (N, T)")
    y = y.astype(np.float32, copy=False)
    _finite(y, name)
    return y


def from_arrays(x: np.ndarray, y: np.ndarray, x_val: np.ndarray | None, y_val: np.ndarray | None,
                task: str | None, bounds: UploadBounds,
                names: tuple[str, str, str, str] = NPZ_ARRAYS) -> DatasetArrays:
    """Validate arrays and bring them into the normalised form."""
    nx, ny, nxv, nyv = names
    x = _features(x, nx, bounds)
    if len(x) != len(y):
        raise rejected(f"{nx} has {len(x)} samples but {ny} has {len(y)}; they must match")
    if x_val is not None and y_val is not None:
        x_val = _features(x_val, nxv, bounds)
        if x_val.shape[1:] != x.shape[1:] or x_val.dtype != x.dtype:
            raise rejected(f"{nxv} holds samples of shape {list(x_val.shape[1:])} ({x_val.dtype}); "
                           f"{nx} holds {list(x.shape[1:])} ({x.dtype}); they must match")
        if len(x_val) != len(y_val):
            raise rejected(f"{nxv} has {len(x_val)} samples but {nyv} has {len(y_val)}; "
                           "they must match")
    if task is None:
        task = "regression" if y.dtype.kind == "f" else "classification"
    if task == "classification":
        codes, codes_val, class_names = _encode_labels(y, y_val, (ny, nyv))
        return DatasetArrays(task, x, codes, class_names, x_val, codes_val)
    y = _targets(y, ny)
    if y_val is not None:
        y_val = _targets(y_val, nyv)
        if y_val.shape[1:] != y.shape[1:]:
            raise rejected(f"{nyv} has {y_val.shape[1]} target(s) per sample; {ny} has "
                           f"{y.shape[1]}")
    return DatasetArrays(task, x, y, [], x_val, y_val)

