"""One-off moves of existing blobs between SQL chunks and the object store.

Each blob moves on its own and is checked against its sha256 before the row is switched
over; the row then names the new copy in one commit and the old copy goes after, so a
crash at any point leaves every row naming complete bytes and a rerun finishes the job.
Run it with the service stopped or running: readers follow the row.

    python -m app.services.artifact_migration to-s3|to-sql
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.artifacts.s3 import S3Objects
from app.artifacts.store import ObjectBlobStore
from app.blobstore import rechunk
from app.db import make_engine, make_sessionmaker, transaction
from app.models import Blob, BlobChunk
from app.settings import Settings, get_settings


class MigrationError(RuntimeError):
    """A blob's copy does not match its recorded sha256; its row was left as it was."""


@dataclass
class Moved:
    blobs: int = 0
    bytes: int = 0


def _pending(factory: sessionmaker[Session], to_objects: bool) -> Iterator[Blob]:
    where = Blob.location.is_(None) if to_objects else Blob.location.is_not(None)
    with factory() as session:
        ids = list(session.scalars(select(Blob.id).where(Blob.complete.is_(True), where)))
    for blob_id in ids:
        with factory() as session:
            blob = session.get(Blob, blob_id)
        if blob is not None:
            yield blob


def to_objects(factory: sessionmaker[Session], store: ObjectBlobStore) -> Moved:
    """Copy every blob kept in SQL into the object store and drop its chunks."""
    moved = Moved()
    for blob in _pending(factory, to_objects=True):
        url = store.objects.url_for(f"{blob.kind}/{blob.id}")
        written = store.objects.put_stream(url, store.iter_sql_chunks(blob.id))
        if written.sha256 != blob.sha256:
            store.objects.delete([url])
            raise MigrationError(f"blob {blob.id}: SQL chunks hash to {written.sha256}, "
                                 f"recorded {blob.sha256}")
        with transaction(factory) as session:
            session.execute(update(Blob).where(Blob.id == blob.id).values(location=url))
            session.execute(delete(BlobChunk).where(BlobChunk.blob_id == blob.id))
        moved.blobs, moved.bytes = moved.blobs + 1, moved.bytes + written.size
    return moved


def to_sql(factory: sessionmaker[Session], store: ObjectBlobStore) -> Moved:
    """Copy every blob kept as an object back into SQL chunks and delete the object."""
    moved = Moved()
    for blob in _pending(factory, to_objects=False):
        assert blob.location is not None
        with transaction(factory) as session:  # leftovers of an interrupted run
            session.execute(delete(BlobChunk).where(BlobChunk.blob_id == blob.id))
        digest, size = hashlib.sha256(), 0
        pieces = store.objects.iter_object(blob.location, store.chunk_bytes)
        for seq, chunk in enumerate(rechunk(pieces, store.chunk_bytes)):
            digest.update(chunk)
            size += len(chunk)
            with transaction(factory) as session:
                session.execute(insert(BlobChunk).values(blob_id=blob.id, seq=seq, data=chunk))
        if digest.hexdigest() != blob.sha256:
            with transaction(factory) as session:
                session.execute(delete(BlobChunk).where(BlobChunk.blob_id == blob.id))
            raise MigrationError(f"blob {blob.id}: object hashes to {digest.hexdigest()}, "
                                 f"recorded {blob.sha256}")
        with transaction(factory) as session:
            session.execute(update(Blob).where(Blob.id == blob.id).values(
                location=None, chunk_bytes=store.chunk_bytes))
        store.objects.delete([blob.location])
        moved.blobs, moved.bytes = moved.blobs + 1, moved.bytes + size
    return moved


def run(direction: str, settings: Settings) -> Moved:
    """Move the blobs of the configured database in direction ("to-s3" or "to-sql")."""
    if not settings.artifact_url:
        raise MigrationError("set TRAINERY_ARTIFACT_URL=s3://bucket/prefix (and the S3 "
                             "endpoint and credentials) to migrate")
    engine = make_engine(settings.resolved_database_url(), pool_size=1)
    try:
        factory = make_sessionmaker(engine)
        store = ObjectBlobStore(factory, S3Objects(settings), settings.blob_chunk_bytes)
        return (to_objects if direction == "to-s3" else to_sql)(factory, store)
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    """Command line: move every blob one way and say how many moved."""
    parser = argparse.ArgumentParser(prog="python -m app.services.artifact_migration",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("direction", choices=["to-s3", "to-sql"])
    args = parser.parse_args(argv)
    try:
        moved = run(args.direction, get_settings())
    except MigrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"moved {moved.blobs} blobs ({moved.bytes} bytes) {args.direction}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
