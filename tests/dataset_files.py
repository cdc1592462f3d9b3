"""Upload files that tests build: learnable npz, CSV and image-zip datasets, and broken ones."""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Sequence

import numpy as np

SHAPES = ("circle", "square", "triangle")
COLOURS = {"circle": (220, 40, 40), "square": (40, 200, 60), "triangle": (40, 70, 220)}


def blobs(n: int, classes: int = 3, dim: int = 4, seed: int = 0,
          spread: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs, one per class, far enough apart to learn in a few epochs."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).normal(0.0, spread, size=(classes, dim))
    y = rng.integers(0, classes, size=n)
    x = centres[y] + rng.normal(0.0, 1.0, size=(n, dim))
    return x.astype(np.float32), y.astype(np.int64)


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def csv_bytes(header: Sequence[str], rows: Sequence[Sequence[object]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode()


def flower_csv(n: int, seed: int = 0) -> tuple[bytes, np.ndarray, np.ndarray, list[str]]:
    """A CSV of 3 features and a string label column 'species' (in the middle, on purpose)."""
    names = ["setosa", "versicolor", "virginica"]
    x, y = blobs(n, classes=3, dim=3, seed=seed)
    rows = [[f"{a:.5f}", names[c], f"{b:.5f}", f"{d:.5f}"]
            for (a, b, d), c in zip(x, y, strict=True)]
    return csv_bytes(["petal", "species", "sepal", "stem"], rows), x, y, names


def shape_image(shape: str, size: int, rng: np.random.Generator, mode: str = "RGB") -> np.ndarray:
    """A small picture of one shape in its colour on a noisy background, as uint8 HWC."""
    from PIL import Image, ImageDraw

    background = tuple(int(v) for v in rng.integers(0, 60, size=3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    margin = int(rng.integers(1, max(2, size // 5)))
    box = (margin, margin, size - 1 - int(rng.integers(1, max(2, size // 5))), size - 1 - margin)
    colour = COLOURS[shape]
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])],
                     fill=colour)
    noise = rng.integers(-20, 21, size=(size, size, 3))
    pixels: np.ndarray = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    if mode == "L":
        pixels = np.asarray(Image.fromarray(pixels).convert("L"))[:, :, None]
    return pixels


def shape_images(per_class: int, size: int = 16, seed: int = 0,
                 mode: str = "RGB") -> tuple[np.ndarray, np.ndarray]:
    """per_class images of each shape, labels in SHAPES order (which is also sorted order)."""
    rng = np.random.default_rng(seed)
    x = np.stack([shape_image(s, size, rng, mode) for s in SHAPES for _ in range(per_class)])
    y = np.repeat(np.arange(len(SHAPES)), per_class)
    return x, y


def encode_image(pixels: np.ndarray, fmt: str = "png") -> bytes:
    from PIL import Image

    image = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG" if fmt == "jpg" else "PNG")
    return buffer.getvalue()


def zip_bytes(files: dict[str, bytes], dirs: Sequence[str] = ()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for d in dirs:
            zf.writestr(zipfile.ZipInfo(d.rstrip("/") + "/"), b"")
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def image_zip(x: np.ndarray, y: np.ndarray, class_names: Sequence[str] = SHAPES,
              root: str = "", fmt: str = "png") -> bytes:
    """A zip of ROOT/CLASS_NAME/NNN.png files with explicit folder entries."""
    prefix = f"{root}/" if root else ""
    files = {f"{prefix}{class_names[int(label)]}/{i:04d}.{fmt}": encode_image(pixels, fmt)
             for i, (pixels, label) in enumerate(zip(x, y, strict=True))}
    return zip_bytes(files, dirs=[f"{prefix}{c}" for c in class_names])
