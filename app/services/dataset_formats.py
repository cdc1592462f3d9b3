"""Uploaded files -> one normalised dataset (arrays, task, class names), or a 4xx that says why.

Reads .npz, .csv and image-folder .zip uploads from a seekable file (the spooled
upload) with numpy, the csv module and Pillow: the API process imports no
framework. Archives are bounded twice, by the sizes their directory claims and by
the bytes actually read. The normalised form is an npz without pickles that the
workers read back with `read_normalised`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import zipfile
import zlib
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np

from app.core.errors import InvalidInput, PayloadTooLarge, problem

FORMATS = ("npz", "csv", "zip")
TASKS = ("classification", "regression")
NPZ_ARRAYS = ("x", "y", "x_val", "y_val")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_TARGETS = ("label", "target")
MAX_CLASSES = 1000
MAX_IMAGE_SIDE = 4096
# Pillow's own decompression-bomb threshold; checked before an image is decoded.
MAX_IMAGE_PIXELS = 89_478_485
READ_CHUNK = 1 << 20
# What zip tools add beside the data: macOS resource forks, Finder and Explorer files.
JUNK_NAMES = {"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini"}


@dataclass(frozen=True)
class UploadOptions:
    """How to read an upload; everything here (but the name) changes the resulting dataset."""

    format: str
    target: str | None = None  # CSV label column
    task: str | None = None  # None: decided by the data
    image_size: tuple[int, int] | None = None  # (height, width) for image zips

    def as_dict(self) -> dict[str, Any]:
        return {"format": self.format, "target": self.target, "task": self.task,
                "image_size": list(self.image_size) if self.image_size else None}


@dataclass(frozen=True)
class UploadBounds:
    max_unpacked_bytes: int
    max_files: int
    max_sample_elements: int


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


def rejected(message: str, loc: tuple[str | int, ...] = ("file",)) -> InvalidInput:
    """A 422 naming what is wrong with the upload (or one of its form fields)."""
    return InvalidInput([problem(loc, message, "invalid_dataset")])


class _Budget:
    """Bytes an upload may still unpack to; taking more than is left is a 413."""

    def __init__(self, limit: int) -> None:
        self.limit, self.left = limit, limit

    def check(self, n: int, what: str) -> None:
        if n > self.left:
            raise PayloadTooLarge(
                f"{what} unpacks to more than {self.limit} bytes, the most this service accepts "
                "(TRAINERY_MAX_UNPACKED_BYTES)")

    def take(self, n: int, what: str) -> None:
        self.check(n, what)
        self.left -= n


# -- options ------------------------------------------------------------------


def parse_options(filename: str, fields: dict[str, str]) -> UploadOptions:
    """The upload's form fields -> options, or a 422 naming each bad field."""
    problems: list[dict[str, Any]] = []
    fmt = (fields.get("format") or "").strip().lower()
    if not fmt:
        suffix = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
        fmt = suffix
    if fmt not in FORMATS:
        problems.append(problem(("file",), f"cannot tell the format of {filename!r}: name the file "
                                "*.npz, *.csv or *.zip, or set the form field 'format' to one "
                                "of npz, csv, zip", "invalid_dataset"))
    task = (fields.get("task") or "").strip().lower() or None
    if task is not None and task not in TASKS:
        problems.append(problem(("task",), f"unknown task {task!r}; choose classification or "
                                "regression", "invalid_dataset"))
    target = (fields.get("target") or "").strip() or None
    if fmt == "zip" and task == "regression":
        problems.append(problem(("task",), "an image zip is a classification dataset (a folder "
                                "per class)", "invalid_dataset"))
    image_size = None
    if fields.get("image_size"):
        match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", fields["image_size"])
        if match is None or not all(1 <= int(g) <= MAX_IMAGE_SIDE for g in match.groups()):
            problems.append(problem(("image_size",), "give the image size as HEIGHTxWIDTH, e.g. "
                                    f"'28x28', each side 1 to {MAX_IMAGE_SIDE}", "invalid_dataset"))
        else:
            image_size = (int(match.group(1)), int(match.group(2)))
    if problems:
        raise InvalidInput(problems)
    return UploadOptions(fmt, target if fmt == "csv" else None, task,
                         image_size if fmt == "zip" else None)


def parse(upload: IO[bytes], options: UploadOptions, bounds: UploadBounds) -> DatasetArrays:
    """Read and validate an upload in the given format."""
    upload.seek(0)
    if options.format == "npz":
        return parse_npz(upload, options, bounds)
    if options.format == "csv":
        return parse_csv(upload, options, bounds)
    return parse_image_zip(upload, options, bounds)


# -- shared checks ------------------------------------------------------------------


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


# -- zip archives (npz and image zips) ----------------------------------------------


def _open_zip(upload: IO[bytes], what: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(upload)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise rejected(f"the file is not a valid {what} (a zip archive; it may be truncated "
                       f"or corrupt): {exc}") from exc


def _members(zf: zipfile.ZipFile, bounds: UploadBounds, what: str) -> list[zipfile.ZipInfo]:
    """The archive's entries, after the limits its directory can be checked against."""
    infos = zf.infolist()
    if len(infos) > bounds.max_files:
        raise PayloadTooLarge(f"the {what} holds {len(infos)} files; this service accepts at most "
                              f"{bounds.max_files} (TRAINERY_MAX_UPLOAD_FILES)")
    _Budget(bounds.max_unpacked_bytes).take(sum(i.file_size for i in infos), f"the {what}")
    for info in infos:
        if info.flag_bits & 0x1:
            raise rejected(f"{info.filename!r} is encrypted; upload an archive without a password")
    return infos


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, budget: _Budget) -> bytes:
    """One entry's bytes, counted as they are inflated (a directory may lie about sizes)."""
    out = bytearray()
    with zf.open(info) as f:
        while chunk := f.read(READ_CHUNK):
            budget.take(len(chunk), "the archive")
            out += chunk
            if len(out) > info.file_size:
                raise rejected(f"{info.filename!r} inflates past the size its archive records; "
                               "the archive is corrupt")
    return bytes(out)


ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError)


# -- npz ----------------------------------------------------------------------------


class _CountedReader:
    """A file-like view of a zip entry that charges every byte it reads to the budget."""

    def __init__(self, f: IO[bytes], budget: _Budget) -> None:
        self.f, self.budget = f, budget

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.budget.take(len(data), "the npz")
        return data


def _read_npy(f: _CountedReader, name: str, budget: _Budget) -> np.ndarray:
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
    zf = _open_zip(upload, "npz")
    try:
        budget = _Budget(bounds.max_unpacked_bytes)
        arrays: dict[str, np.ndarray] = {}
        for info in _members(zf, bounds, "npz"):
            if info.is_dir():
                continue
            name = info.filename.removesuffix(".npy")
            if name not in NPZ_ARRAYS or name in arrays:
                raise rejected(f"unexpected entry {info.filename!r}; an npz holds arrays x and y, "
                               "optionally x_val and y_val (np.savez(f, x=..., y=...))")
            with zf.open(info) as f:
                arrays[name] = _read_npy(_CountedReader(f, budget), name, budget)
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


# -- csv ----------------------------------------------------------------------------


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
        budget = _Budget(bounds.max_unpacked_bytes)
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


# -- image zips ----------------------------------------------------------------------


def _entry_parts(name: str) -> list[str]:
    """An archive path's parts; a path that is absolute or climbs out of its folder is refused."""
    clean = name.replace("\\", "/")
    if clean.startswith("/") or re.match(r"^[A-Za-z]:", clean):
        raise rejected(f"the archive entry {name!r} has an absolute path; zip the class folders "
                       "with relative paths")
    parts = [p for p in clean.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise rejected(f"the archive entry {name!r} escapes its folder (..); the archive is "
                       "refused")
    return parts


def _is_junk(parts: list[str]) -> bool:
    return any(p in JUNK_NAMES or p.startswith(".") for p in parts)


def _class_folders(infos: list[zipfile.ZipInfo]) -> dict[str, list[zipfile.ZipInfo]]:
    """CLASS_NAME -> its image entries, from a tree CLASS_NAME/IMAGE (maybe under one root)."""
    entries = [(info, parts) for info in infos
               if not _is_junk(parts := _entry_parts(info.filename)) and parts]
    files = [parts for info, parts in entries if not info.is_dir()]
    roots = {parts[0] for _, parts in entries}
    strip = len(roots) == 1 and bool(files) and all(len(p) >= 3 for p in files)
    classes: dict[str, list[zipfile.ZipInfo]] = {}
    for info, parts in entries:
        parts = parts[1:] if strip else parts
        if info.is_dir():
            if len(parts) == 1:
                classes.setdefault(parts[0], [])
            continue
        if len(parts) != 2:
            raise rejected(f"{info.filename!r} is not CLASS_NAME/IMAGE; put every image in a "
                           "folder named after its class")
        if not parts[1].lower().endswith(IMAGE_SUFFIXES):
            raise rejected(f"{info.filename!r} is not an image; the class folders hold only "
                           + ", ".join(IMAGE_SUFFIXES) + " files")
        classes.setdefault(parts[0], []).append(info)
    empty = sorted(name for name, images in classes.items() if not images)
    if empty:
        raise rejected(f"the class folder {empty[0]!r} has no images")
    if len(classes) < 2:
        found = f"one class folder ({next(iter(classes))!r})" if classes else "no class folders"
        raise rejected(f"the archive has {found}; a classifier needs at least two, each holding "
                       "that class's images")
    if len(classes) > MAX_CLASSES:
        raise rejected(f"the archive has {len(classes)} class folders; this service takes at "
                       f"most {MAX_CLASSES}")
    return classes


def parse_image_zip(upload: IO[bytes], options: UploadOptions,
                    bounds: UploadBounds) -> DatasetArrays:
    """A zip of CLASS_NAME/*.png|*.jpg -> uint8 (N, H, W, C) images and class indices."""
    from PIL import Image

    zf = _open_zip(upload, "zip")
    try:
        classes = _class_folders(_members(zf, bounds, "zip"))
        names = sorted(classes)
        items = [(label, info) for label, name in enumerate(names) for info in classes[name]]

        def decode(info: zipfile.ZipInfo, budget: _Budget,
                   size: tuple[int, int] | None = None, mode: str = "") -> Image.Image:
            """The image's header only, or (given size and mode) the image decoded into them."""
            data = _read_member(zf, info, budget)
            try:
                image: Image.Image = Image.open(io.BytesIO(data))
                if image.width * image.height > MAX_IMAGE_PIXELS:
                    raise ValueError(f"{image.width}x{image.height} pixels is more than this "
                                     "service decodes")
                if size is None:
                    return image
                image = image.convert(mode)
                if image.size != size:
                    image = image.resize(size, Image.Resampling.BILINEAR)
                return image
            except Exception as exc:  # noqa: BLE001 - any decoder failure is bad user data
                raise rejected(f"the image {info.filename!r} does not decode: {exc}") from exc

        # Pass 1 reads only headers: the common size and whether every image is grayscale.
        budget = _Budget(bounds.max_unpacked_bytes)
        sizes: Counter[tuple[int, int]] = Counter()
        grayscale = True
        for _, info in items:
            image = decode(info, budget)
            sizes[(image.height, image.width)] += 1
            grayscale = grayscale and image.mode in ("1", "L")
        height, width = options.image_size or sizes.most_common(1)[0][0]
        channels = 1 if grayscale else 3
        per_image = height * width * channels
        if per_image > bounds.max_sample_elements:
            raise rejected(f"{height}x{width}x{channels} images have {per_image} values each; this "
                           f"service takes at most {bounds.max_sample_elements} (set image_size)",
                           ("image_size",))
        _Budget(bounds.max_unpacked_bytes).take(per_image * len(items), "the decoded images")

        # Pass 2 decodes each image straight into its row of the array.
        x = np.empty((len(items), height, width, channels), dtype=np.uint8)
        y = np.empty(len(items), dtype=np.int64)
        budget = _Budget(bounds.max_unpacked_bytes)
        for row, (label, info) in enumerate(items):
            image = decode(info, budget, (width, height), "L" if grayscale else "RGB")
            x[row] = np.asarray(image, dtype=np.uint8).reshape(height, width, channels)
            y[row] = label
    except ZIP_ERRORS as exc:
        raise rejected(f"the zip is corrupt: {exc}") from exc
    finally:
        zf.close()
    data = DatasetArrays("classification", x, y, names)
    data.extra = {"image_size": [height, width], "sizes_seen": len(sizes)}
    return data


# -- the normalised form ---------------------------------------------------------------


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
