"""An upload's form fields -> how to read it (UploadOptions), or a 422 naming each bad field."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from app.core.errors import InvalidInput, problem

FORMATS = ("npz", "csv", "zip")
TASKS = ("classification", "regression")
MAX_IMAGE_SIDE = 4096


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

