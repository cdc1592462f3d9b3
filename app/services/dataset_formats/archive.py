"""Archive limits: what an upload may unpack to, counted by its directory and by the bytes read."""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from typing import IO

from app.core.errors import PayloadTooLarge
from app.services.dataset_formats.checks import rejected

READ_CHUNK = 1 << 20
DEFLATE_MAX_RATIO = 1032
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError)


@dataclass(frozen=True)
class UploadBounds:
    max_unpacked_bytes: int
    max_files: int
    max_sample_elements: int


class Budget:
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


def open_zip(upload: IO[bytes], what: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(upload)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise rejected(f"the file is not a valid {what} (a zip archive; it may be truncated "
                       f"or corrupt): {exc}") from exc


def members(zf: zipfile.ZipFile, bounds: UploadBounds, what: str,
            archive_bytes: int) -> list[zipfile.ZipInfo]:
    """The archive's entries, after the limits its directory can be checked against.

    The directory's sizes are claims: each is held to the bytes the archive really
    has (archive_bytes) before anything is read, so no claim can make us allocate
    more than the file could hold; reads are counted again as they inflate.
    """
    infos = zf.infolist()
    if len(infos) > bounds.max_files:
        raise PayloadTooLarge(f"the {what} holds {len(infos)} files; this service accepts at most "
                              f"{bounds.max_files} (TRAINERY_MAX_UPLOAD_FILES)")
    if sum(i.compress_size for i in infos) > archive_bytes:
        raise rejected(f"the {what}'s directory claims more compressed bytes than its "
                       f"{archive_bytes} bytes hold; the archive is corrupt")
    for info in infos:
        if info.flag_bits & 0x1:
            raise rejected(f"{info.filename!r} is encrypted; upload an archive without a password")
        if info.file_size > _most_inflated(info):
            raise rejected(f"{info.filename!r} claims {info.file_size} bytes from "
                           f"{info.compress_size} stored, more than its compression can give; "
                           "the archive is corrupt")
    Budget(bounds.max_unpacked_bytes).take(sum(i.file_size for i in infos), f"the {what}")
    return infos


def _most_inflated(info: zipfile.ZipInfo) -> int:
    # Stored entries are their bytes; deflate inflates at most ~1032:1 (a 258-byte match per
    # two bits). Other methods (bzip2, lzma) go further: their reads are counted instead.
    if info.compress_type == zipfile.ZIP_STORED:
        return info.compress_size
    if info.compress_type == zipfile.ZIP_DEFLATED:
        return DEFLATE_MAX_RATIO * info.compress_size + 1024
    return info.file_size


def read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, budget: Budget) -> bytes:
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

