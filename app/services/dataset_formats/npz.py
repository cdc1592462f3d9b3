"""npz uploads: arrays x and y (optionally x_val, y_val), read without numpy's pickle path."""

from __future__ import annotations

import io
import math
from typing import IO

import numpy as np

from app.core.dataset_arrays import DatasetArrays
from app.services.dataset_formats.archive import (
    READ_CHUNK,
    ZIP_ERRORS,
    Budget,
    UploadBounds,
    members,
    open_zip,
)
from app.services.dataset_formats.checks import NPZ_ARRAYS, from_arrays, rejected
from app.services.dataset_options import UploadOptions


class _CountedReader:
    """A file-like view of a zip entry that charges every byte it reads to the budget."""

    def __init__(self, f: IO[bytes], budget: Budget) -> None:
        self.f, self.budget, self.consumed = f, budget, 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.budget.take(len(data), "the npz")
        self.consumed += len(data)
        return data


def _read_npy(f: _CountedReader, name: str, entry_bytes: int, budget: Budget) -> np.ndarray:
    """One .npy entry, parsed without numpy's pickle path: header first, then the raw numbers."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, EOFError, SyntaxError, TypeError) as exc:
        raise rejected(f"{name} is not a valid .npy array: {exc}") from exc
    if dtype.hasobject:
        raise rejected(f"{name} holds Python objects (a pickle), which this service never loads; "
                       "save plain number (or, for labels, string) arrays")
    if dtype.kind not in "biufU" or dtype.fields is not None or dtype.subdtype is not None:
        raise rejected(f"{name} has dtype {dtype}; use numbers (or strings for labels)")
    nbytes = math.prod(shape) * dtype.itemsize
    # The header is a claim: it must match what the entry holds (a size its archive already
    # held to the file's real bytes) before a byte is allocated for it.
    held = entry_bytes - f.consumed
    if nbytes != held:
        raise rejected(f"{name}'s header promises {nbytes} bytes of data ({list(shape)} "
                       f"{dtype}) but its entry holds {held}; the file is corrupt")
    budget.check(nbytes, "the npz")
    buffer = bytearray(nbytes)
    view = memoryview(buffer)
    got = 0
    while got < nbytes:
        chunk = f.read(min(READ_CHUNK, nbytes - got))
        if not chunk:
            raise rejected(f"{name} is truncated: its header promises {nbytes} bytes of data, "
                           f"the file holds {got}")
        view[got:got + len(chunk)] = chunk
        got += len(chunk)
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def parse_npz(upload: IO[bytes], options: UploadOptions, bounds: UploadBounds) -> DatasetArrays:
    """An npz of x and y (optionally x_val and y_val)."""
    zf = open_zip(upload, "npz")
    try:
        budget = Budget(bounds.max_unpacked_bytes)
        arrays: dict[str, np.ndarray] = {}
        for info in members(zf, bounds, "npz", upload.seek(0, io.SEEK_END)):
            if info.is_dir():
                continue
            name = info.filename.removesuffix(".npy")
            if name not in NPZ_ARRAYS or name in arrays:
                raise rejected(f"unexpected entry {info.filename!r}; an npz holds arrays x and y, "
                               "optionally x_val and y_val (np.savez(f, x=..., y=...))")
            with zf.open(info) as f:
                arrays[name] = _read_npy(_CountedReader(f, budget), name, info.file_size, budget)
    except ZIP_ERRORS as exc:
        raise rejected(f"the npz is corrupt: {exc}") from exc
    finally:
        zf.close()
    missing = [n for n in ("x", "y") if n not in arrays]
    if missing:
        raise rejected("the npz has no array " + " or ".join(missing)
                       + "; save it with np.savez(f, x=features, y=labels)")
    if ("x_val" in arrays) != ("y_val" in arrays):
        raise rejected("give x_val and y_val together, or neither")
    return from_arrays(arrays["x"], arrays["y"], arrays.get("x_val"), arrays.get("y_val"),
                       options.task, bounds)

