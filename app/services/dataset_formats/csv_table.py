"""CSV uploads: a header row, numeric feature columns and one label column."""

from __future__ import annotations

import csv
from array import array
from collections.abc import Iterator
from typing import IO

import numpy as np

from app.core.dataset_arrays import DatasetArrays
from app.services.dataset_formats.archive import Budget, UploadBounds
from app.services.dataset_formats.checks import from_arrays, rejected
from app.services.dataset_options import UploadOptions

DEFAULT_TARGETS = ("label", "target")


def _text_lines(upload: IO[bytes]) -> Iterator[str]:
    for number, raw in enumerate(upload, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise rejected(f"line {number} is not UTF-8 text; save the CSV as UTF-8") from exc
        yield line.removeprefix("\ufeff") if number == 1 else line


def parse_csv(upload: IO[bytes], options: UploadOptions, bounds: UploadBounds) -> DatasetArrays:
    """A CSV with a header row: numeric feature columns and the label column named by target."""
    reader = csv.reader(_text_lines(upload))
    try:
        header = [h.strip() for h in next(reader, [])]
        if not any(header):
            raise rejected("the CSV has no header row; the first line must name the columns")
        target = options.target or _default_target(header)
        if target not in header:
            raise rejected(f"the CSV has no column {target!r}; its columns are "
                           + ", ".join(repr(h) for h in header), ("target",))
        if header.count(target) > 1 or len(set(header)) != len(header):
            dupes = sorted({h for h in header if header.count(h) > 1})
            raise rejected("the CSV header repeats column name(s) " + ", ".join(map(repr, dupes)))
        t = header.index(target)
        features = [i for i in range(len(header)) if i != t]
        if not features:
            raise rejected("the CSV needs at least one feature column beside the target")
        values: array[float] = array("d")
        labels: list[str] = []
        budget = Budget(bounds.max_unpacked_bytes)
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            if len(row) != len(header):
                raise rejected(f"line {line} has {len(row)} fields but the header has "
                               f"{len(header)}; every row needs one value per column")
            for i in features:
                cell = row[i].strip()
                try:
                    values.append(float(cell))
                except ValueError:
                    what = "is empty" if not cell else f"holds {cell[:40]!r}"
                    raise rejected(f"feature column {header[i]!r} must be numeric, but line "
                                   f"{line} {what}") from None
            label = row[t].strip()
            if not label:
                raise rejected(f"line {line} has no value in the target column {target!r}")
            labels.append(label)
            budget.take(4 * len(features) + len(label), "the CSV")
    except csv.Error as exc:
        raise rejected(f"the file is not a readable CSV: {exc}") from exc
    if not labels:
        raise rejected("the CSV has a header but no data rows")
    x = np.frombuffer(values, dtype=np.float64).reshape(len(labels), len(features))
    y = _csv_labels(labels, target, options.task)
    data = from_arrays(x, y, None, None, options.task or "classification", bounds,
                       ("the features", f"the target column {target!r}", "", ""))
    data.feature_names = [header[i] for i in features]
    data.extra = {"target": target}
    return data


def _default_target(header: list[str]) -> str:
    """Without a target field, the one column called label or target is the label column."""
    named = [h for h in header if h.lower() in DEFAULT_TARGETS]
    if len(named) != 1:
        raise rejected("name the CSV's label column in the form field 'target' (no single "
                       "column is called " + " or ".join(DEFAULT_TARGETS) + ")", ("target",))
    return named[0]


def _csv_labels(labels: list[str], target: str, task: str | None) -> np.ndarray:
    numeric = np.empty(len(labels), dtype=np.float64)
    for i, label in enumerate(labels):
        try:
            numeric[i] = float(label)
        except ValueError:
            if task == "regression":
                raise rejected(f"the target column {target!r} must be numeric for regression, "
                               f"but row {i + 1} holds {label[:40]!r}") from None
            return np.array(labels)  # string labels: each distinct string is a class
    return numeric

