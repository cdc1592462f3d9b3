"""Uploaded files -> one normalised dataset (app.core.dataset_arrays), or a 4xx that says why.

One module per format (npz, csv_table, image_zip) over shared checks and the
archive limits; numpy, the csv module and Pillow only: the API imports no framework.
"""

from __future__ import annotations

from typing import IO

from app.core.dataset_arrays import DatasetArrays
from app.services.dataset_formats.archive import UploadBounds
from app.services.dataset_formats.checks import rejected
from app.services.dataset_formats.csv_table import parse_csv
from app.services.dataset_formats.image_zip import parse_image_zip
from app.services.dataset_formats.npz import parse_npz
from app.services.dataset_options import UploadOptions

__all__ = ["UploadBounds", "parse", "rejected"]


def parse(upload: IO[bytes], options: UploadOptions, bounds: UploadBounds) -> DatasetArrays:
    """Read and validate an upload in the given format."""
    upload.seek(0)
    if options.format == "npz":
        return parse_npz(upload, options, bounds)
    if options.format == "csv":
        return parse_csv(upload, options, bounds)
    return parse_image_zip(upload, options, bounds)

