"""Uploaded datasets cached on the worker's disk by hash, so a host pulls each blob once.

Entries are the normalised npz files, named by the blob's sha256 under
TRAINERY_DATA_DIR/dataset-cache. A file's mtime is its last use; when the cache
grows past TRAINERY_DATASET_CACHE_BYTES the least recently used go first. Every
runner on the host shares the directory: a per-entry lock makes one of them
download while the others wait, a rename makes a download appear whole or not at
all, and a reader holds its file open, so an eviction never pulls data from under it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from app.blobstore import BlobCorrupt, BlobMissing, BlobStore
from app.models import Dataset
from app.settings import get_settings
from workers.errors import UserError
from workers.reporting import JobReporter

SUFFIX = ".npz"


class DatasetCache:
    """Files keyed by a content hash, filled on a miss, bounded in bytes, evicted LRU."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root, self.max_bytes = root, max_bytes
        (root / "locks").mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        with (self.root / "locks" / f"{name}.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def path(self, key: str) -> Path:
        return self.root / f"{key}{SUFFIX}"

    def open(self, key: str, fill: Callable[[IO[bytes]], None]) -> IO[bytes]:
        """The entry for key opened for reading; fill(out) writes it first when it is missing."""
        if not key.isalnum():
            raise ValueError(f"not a cache key: {key!r}")
        path = self.path(key)
        with self._locked(key):
            try:
                handle = path.open("rb")
                os.utime(path)  # a hit: now the most recently used
            except FileNotFoundError:
                part = self.root / f".{key}.{uuid.uuid4().hex}.part"
                try:
                    with part.open("wb") as out:
                        fill(out)
                    os.replace(part, path)
                finally:
                    part.unlink(missing_ok=True)
                handle = path.open("rb")
        self.evict(keep=path)
        return handle

    def entries(self) -> list[tuple[float, int, Path]]:
        """(last use, size, path) of every complete entry, oldest first."""
        found = []
        for path in self.root.glob(f"*{SUFFIX}"):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            found.append((stat.st_mtime, stat.st_size, path))
        return sorted(found)

    def evict(self, keep: Path | None = None) -> list[Path]:
        """Drop least recently used entries until the cache fits its bound; what was dropped."""
        dropped = []
        with self._locked("evict"):
            entries = self.entries()
            total = sum(size for _, size, _ in entries)
            for _, size, path in entries:
                if total <= self.max_bytes:
                    break
                if path == keep:
                    continue  # the entry about to be read stays, even alone over the bound
                path.unlink(missing_ok=True)
                total -= size
                dropped.append(path)
        return dropped


def _download(blobs: BlobStore, blob_id: str, sha256: str) -> Callable[[IO[bytes]], None]:
    def fill(out: IO[bytes]) -> None:
        digest = hashlib.sha256()
        for chunk in blobs.iter_chunks(blob_id):
            digest.update(chunk)
            out.write(chunk)
        if digest.hexdigest() != sha256:
            raise BlobCorrupt(f"blob {blob_id} does not match its sha256")
    return fill


def fetcher(reporter: JobReporter) -> Callable[[str], IO[bytes]]:
    """fetch(dataset_id) for workers.datasets.load: the job owner's dataset, through the cache."""
    settings = get_settings()
    cache = DatasetCache(settings.data_dir / "dataset-cache", settings.dataset_cache_bytes)

    def fetch(dataset_id: str) -> IO[bytes]:
        with reporter.factory() as session:
            row = session.get(Dataset, dataset_id)
            blob_id = row.blob_id if row is not None and row.owner == reporter.owner else None
        if blob_id is None:
            raise UserError(f"dataset {dataset_id} does not exist (it may have been deleted)")
        try:
            info = reporter.blobs.info(blob_id)
        except BlobMissing as exc:
            raise UserError(f"the data of dataset {dataset_id} is missing from the store") from exc
        return cache.open(info.sha256, _download(reporter.blobs, blob_id, info.sha256))

    return fetch
