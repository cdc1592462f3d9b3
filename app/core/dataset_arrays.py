"""The normalised dataset: arrays as training uses them, stored as an npz without pickles.

The API writes it once per upload; workers read it back (numpy only, no framework)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np


@dataclass
class DatasetArrays:
    """A dataset as training uses it: x as uploaded (float32 or uint8), y labels or targets."""

    task: str
    x: np.ndarray
    y: np.ndarray
    class_names: list[str]
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    feature_names: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sample_shape(self) -> list[int]:
        return [int(d) for d in self.x.shape[1:]]

    @property
    def n_val(self) -> int:
        return 0 if self.x_val is None else int(len(self.x_val))


def write_normalised(data: DatasetArrays, out: IO[bytes]) -> None:
    """The dataset as the workers read it: an npz of arrays, its metadata as JSON bytes."""
    meta = {"version": 1, "task": data.task, "class_names": data.class_names,
            "feature_names": data.feature_names}
    arrays = {"x": data.x, "y": data.y,
              "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
    if data.x_val is not None and data.y_val is not None:
        arrays.update(x_val=data.x_val, y_val=data.y_val)
    np.savez_compressed(out, **arrays)  # type: ignore[arg-type]


def read_normalised(f: IO[bytes]) -> DatasetArrays:
    """Read back what write_normalised wrote (pickles stay refused)."""
    with np.load(f, allow_pickle=False) as z:
        meta = json.loads(z["meta"].tobytes())
        has_val = "x_val" in z.files
        return DatasetArrays(meta["task"], z["x"], z["y"], list(meta["class_names"]),
                             z["x_val"] if has_val else None, z["y_val"] if has_val else None,
                             meta.get("feature_names"))
