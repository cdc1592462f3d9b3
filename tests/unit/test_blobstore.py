"""The chunked blob store on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.blobstore import BlobCorrupt, BlobMissing, BlobStore
from app.db import transaction
from app.models import Blob, BlobChunk


def test_streams_in_fixed_chunks_and_back(factory: sessionmaker[Session]) -> None:
    store = BlobStore(factory, chunk_bytes=1024)
    data = os.urandom(5000)
    pieces = (data[i:i + 333] for i in range(0, len(data), 333))  # odd-sized input pieces
    info = store.write(pieces, owner="o", kind="test")
    assert info.size == 5000 and info.sha256 == hashlib.sha256(data).hexdigest()
    chunks = list(store.iter_chunks(info.id))
    assert [len(c) for c in chunks] == [1024] * 4 + [904]
    assert b"".join(chunks) == data == store.read_bytes(info.id)


def test_a_failed_write_leaves_nothing(factory: sessionmaker[Session]) -> None:
    store = BlobStore(factory, chunk_bytes=1024)

    def broken() -> Iterator[bytes]:
        yield b"x" * 3000
        raise OSError("client went away")

    with pytest.raises(OSError):
        store.write(broken(), owner="o", kind="test")
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(Blob)) == 0
        assert session.scalar(select(func.count()).select_from(BlobChunk)) == 0


def test_incomplete_blob_is_invisible(factory: sessionmaker[Session]) -> None:
    store = BlobStore(factory, chunk_bytes=1024)
    info = store.write_bytes(b"abc" * 1000, owner="o", kind="test")
    with transaction(factory) as session:
        session.execute(update(Blob).where(Blob.id == info.id).values(complete=False))
    with pytest.raises(BlobMissing):
        store.info(info.id)


def test_corruption_is_detected(factory: sessionmaker[Session]) -> None:
    store = BlobStore(factory, chunk_bytes=1024)
    info = store.write_bytes(b"abc" * 1000, owner="o", kind="test")
    with transaction(factory) as session:
        session.execute(update(BlobChunk).where(BlobChunk.blob_id == info.id, BlobChunk.seq == 1)
                        .values(data=b"tampered"))
    with pytest.raises(BlobCorrupt):
        store.read_bytes(info.id)


def test_empty_blob(factory: sessionmaker[Session]) -> None:
    store = BlobStore(factory)
    info = store.write_bytes(b"", owner="o", kind="test")
    assert store.read_bytes(info.id) == b"" and info.sha256 == hashlib.sha256(b"").hexdigest()
