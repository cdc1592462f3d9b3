"""Image-folder zips: CLASS_NAME/*.png|*.jpg, decoded with Pillow after bomb and path checks."""

from __future__ import annotations

import io
import re
import zipfile
from collections import Counter
from typing import IO

import numpy as np

from app.core.dataset_arrays import DatasetArrays
from app.services.dataset_formats.archive import (
    ZIP_ERRORS,
    Budget,
    UploadBounds,
    members,
    open_zip,
    read_member,
)
from app.services.dataset_formats.checks import MAX_CLASSES, rejected
from app.services.dataset_options import UploadOptions

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Pillow's own decompression-bomb threshold; checked before an image is decoded.
MAX_IMAGE_PIXELS = 89_478_485
# What zip tools add beside the data: macOS resource forks, Finder and Explorer files.
JUNK_NAMES = {"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini"}


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

    zf = open_zip(upload, "zip")
    try:
        classes = _class_folders(members(zf, bounds, "zip", upload.seek(0, io.SEEK_END)))
        names = sorted(classes)
        items = [(label, info) for label, name in enumerate(names) for info in classes[name]]

        def decode(info: zipfile.ZipInfo, budget: Budget,
                   size: tuple[int, int] | None = None, mode: str = "") -> Image.Image:
            """The image's header only, or (given size and mode) the image decoded into them."""
            data = read_member(zf, info, budget)
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
        budget = Budget(bounds.max_unpacked_bytes)
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
        Budget(bounds.max_unpacked_bytes).take(per_image * len(items), "the decoded images")

        # Pass 2 decodes each image straight into its row of the array.
        x = np.empty((len(items), height, width, channels), dtype=np.uint8)
        y = np.empty(len(items), dtype=np.int64)
        budget = Budget(bounds.max_unpacked_bytes)
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

