"""Chunked blob store in SQL: streamed in and out, never whole in memory."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.models import Blob, BlobChunk


class BlobMissing(LookupError):
    """The blob does not exist or was never completed."""


class BlobCorrupt(ValueError):
    """The stored bytes do not hash to the recorded sha256."""


@dataclass(frozen=True)
class BlobInfo:
    id: str
    size: int
    sha256: str
    # Where the bytes live when not in blob_chunks: "s3://bucket/key" (app/artifacts).
    location: str | None = None


def rechunk(stream: Iterable[bytes], size: int) -> Iterator[bytes]:
    buffer = bytearray()
    for piece in stream:
        buffer += piece
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)


class BlobStore:
    """Writes and reads blobs through short transactions so other writers are never blocked long."""

    def __init__(self, factory: sessionmaker[Session], chunk_bytes: int = 1 << 20) -> None:
        self._factory = factory
        self.chunk_bytes = chunk_bytes

    def write(self, stream: Iterable[bytes], *, owner: str, kind: str) -> BlobInfo:
        """Store the byte stream; the blob becomes visible only after its last chunk and hash."""
        blob_id = f"blob_{uuid.uuid4().hex}"
        digest = hashlib.sha256()
        size = 0
        with transaction(self._factory) as session:
            session.add(Blob(id=blob_id, owner=owner, kind=kind, chunk_bytes=self.chunk_bytes))
        try:
            for seq, chunk in enumerate(rechunk(stream, self.chunk_bytes)):
                digest.update(chunk)
                size += len(chunk)
                with transaction(self._factory) as session:
                    session.add(BlobChunk(blob_id=blob_id, seq=seq, data=chunk))
            sha = digest.hexdigest()
            with transaction(self._factory) as session:
                blob = session.get_one(Blob, blob_id)
                blob.size, blob.sha256, blob.complete = size, sha, True
        except BaseException:
            self.delete(blob_id)
            raise
        return BlobInfo(blob_id, size, sha)

    def write_bytes(self, data: bytes, *, owner: str, kind: str) -> BlobInfo:
        """Store an in-memory payload (a checkpoint, a small model)."""
        if len(data) <= self.chunk_bytes:
            return self._write_one_chunk(data, owner=owner, kind=kind)
        view = memoryview(data)
        step = self.chunk_bytes
        return self.write(
            (bytes(view[i : i + step]) for i in range(0, len(data), step)), owner=owner, kind=kind
        )

    def _write_one_chunk(self, data: bytes, *, owner: str, kind: str) -> BlobInfo:
        """A payload of at most one chunk: header, chunk and hash in one short transaction."""
        with transaction(self._factory) as session:
            return self.add_small(session, data, owner=owner, kind=kind)

    def add_small(self, session: Session, data: bytes, *, owner: str, kind: str) -> BlobInfo:
        """Store a payload of at most one chunk in the caller's transaction, complete at once
        (a training loop's checkpoint goes in with its checkpoint row: one commit an epoch)."""
        if len(data) > self.chunk_bytes:
            raise ValueError(f"{len(data)} bytes do not fit one chunk of {self.chunk_bytes}")
        blob_id = f"blob_{uuid.uuid4().hex}"
        sha = hashlib.sha256(data).hexdigest()
        # Core inserts: the ORM's unit of work costs more than the rows do.
        session.execute(insert(Blob).values(
            id=blob_id, owner=owner, kind=kind, chunk_bytes=self.chunk_bytes, size=len(data),
            sha256=sha, complete=True))
        if data:
            session.execute(insert(BlobChunk).values(blob_id=blob_id, seq=0, data=data))
        return BlobInfo(blob_id, len(data), sha)

    def info(self, blob_id: str) -> BlobInfo:
        """Size and hash of a complete blob."""
        with self._factory() as session:
            blob = session.get(Blob, blob_id)
            if blob is None or not blob.complete or blob.sha256 is None:
                raise BlobMissing(blob_id)
            return BlobInfo(blob.id, blob.size, blob.sha256, blob.location)

    def iter_chunks(self, blob_id: str) -> Iterator[bytes]:
        """Yield the blob's chunks in order, one short query each."""
        info = self.info(blob_id)
        if info.location is not None:
            raise BlobMissing(f"blob {blob_id} is in object storage ({info.location}) and "
                              "TRAINERY_ARTIFACT_URL is not set")
        yield from self.iter_sql_chunks(blob_id)

    def iter_sql_chunks(self, blob_id: str) -> Iterator[bytes]:
        """The chunks stored in SQL, in order (none for a blob kept in object storage)."""
        seq = 0
        while True:
            with self._factory() as session:
                data = session.scalar(
                    select(BlobChunk.data).where(BlobChunk.blob_id == blob_id, BlobChunk.seq == seq)
                )
            if data is None:
                return
            yield data
            seq += 1

    def read_bytes(self, blob_id: str, *, verify: bool = True) -> bytes:
        """The whole blob, checked against its sha256 (for checkpoints, which are loaded whole)."""
        info = self.info(blob_id)
        data = b"".join(self.iter_chunks(blob_id))
        if verify and (len(data) != info.size or hashlib.sha256(data).hexdigest() != info.sha256):
            raise BlobCorrupt(f"blob {blob_id} does not match its sha256")
        return data

    def presign(self, info: BlobInfo, *, filename: str, media_type: str) -> str | None:
        """A short-lived URL a client can fetch the bytes from; None when they are in SQL."""
        return None

    def delete(self, blob_id: str) -> None:
        """Remove a blob and its chunks."""
        with transaction(self._factory) as session:
            self.delete_in(session, [blob_id])

    @staticmethod
    def delete_in(session: Session, blob_ids: list[str]) -> None:
        """Remove blobs and their chunks in the caller's transaction."""
        if blob_ids:
            session.execute(delete(BlobChunk).where(BlobChunk.blob_id.in_(blob_ids)))
            session.execute(delete(Blob).where(Blob.id.in_(blob_ids)))
