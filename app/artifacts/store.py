"""The blob store with its bytes in S3-compatible storage and its metadata in SQL.

An object is uploaded completely before the `blobs` row that names it is committed,
so no reader ever sees a torn one; rows go before their objects are deleted, so a
row never names a deleted object except after a crash (then the reader skips it).
Blobs still in SQL (from before TRAINERY_ARTIFACT_URL was set) stay readable.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator

from sqlalchemy import delete, event, insert, select
from sqlalchemy.orm import Session, sessionmaker

from app.artifacts.s3 import ObjectMissing, S3Objects
from app.blobstore import BlobInfo, BlobMissing, BlobStore
from app.db import transaction
from app.models import Blob, BlobChunk


class ObjectBlobStore(BlobStore):
    """Writes new blobs as objects; reads either kind."""

    def __init__(self, factory: sessionmaker[Session], objects: S3Objects,
                 chunk_bytes: int = 1 << 20) -> None:
        super().__init__(factory, chunk_bytes)
        self.objects = objects

    def _new(self, kind: str) -> tuple[str, str]:
        blob_id = f"blob_{uuid.uuid4().hex}"
        return blob_id, self.objects.url_for(f"{kind}/{blob_id}")

    def write(self, stream: Iterable[bytes], *, owner: str, kind: str) -> BlobInfo:
        """Upload the stream (multipart), then record it complete in one commit."""
        blob_id, url = self._new(kind)
        written = self.objects.put_stream(url, stream)
        try:
            with transaction(self._factory) as session:
                self._insert(session, blob_id, owner, kind, written.size, written.sha256, url)
        except BaseException:
            self.objects.delete([url])
            raise
        return BlobInfo(blob_id, written.size, written.sha256, url)

    def write_bytes(self, data: bytes, *, owner: str, kind: str) -> BlobInfo:
        """Store an in-memory payload (parts of it are views, not copies)."""
        view = memoryview(data)
        step = self.objects.part_bytes
        return self.write((bytes(view[i : i + step]) for i in range(0, len(data), step)),
                          owner=owner, kind=kind)

    def add_small(self, session: Session, data: bytes, *, owner: str, kind: str) -> BlobInfo:
        """Upload now, record in the caller's transaction; delete the object if it rolls back."""
        blob_id, url = self._new(kind)
        written = self.objects.put_bytes(url, data)
        self._delete_on_rollback(session, url)
        self._insert(session, blob_id, owner, kind, written.size, written.sha256, url)
        return BlobInfo(blob_id, written.size, written.sha256, url)

    def _delete_on_rollback(self, session: Session, url: str) -> None:
        committed = False

        def on_commit(_session: Session) -> None:
            nonlocal committed
            committed = True

        def on_rollback(_session: Session) -> None:
            if not committed:
                self.objects.delete([url])

        event.listen(session, "after_commit", on_commit, once=True)
        event.listen(session, "after_rollback", on_rollback, once=True)

    def _insert(self, session: Session, blob_id: str, owner: str, kind: str, size: int,
                sha256: str, url: str) -> None:
        session.execute(insert(Blob).values(
            id=blob_id, owner=owner, kind=kind, chunk_bytes=self.chunk_bytes, size=size,
            sha256=sha256, complete=True, location=url))

    def iter_chunks(self, blob_id: str) -> Iterator[bytes]:
        """The bytes from the object (or from SQL for a blob written before)."""
        info = self.info(blob_id)
        if info.location is None:
            yield from self.iter_sql_chunks(blob_id)
            return
        try:
            yield from self.objects.iter_object(info.location, self.chunk_bytes)
        except ObjectMissing as exc:
            raise BlobMissing(f"blob {blob_id}: object {info.location} is missing") from exc

    def presign(self, info: BlobInfo, *, filename: str, media_type: str) -> str | None:
        """A presigned GET for a blob kept as an object."""
        if info.location is None:
            return None
        return self.objects.presign(info.location, filename=filename, media_type=media_type)

    def delete(self, blob_id: str) -> None:
        """Remove the row (and any chunks), then the object."""
        with transaction(self._factory) as session:
            self.delete_in(session, [blob_id])

    def delete_in(self, session: Session, blob_ids: list[str]) -> None:  # type: ignore[override]
        """Remove rows in the caller's transaction; their objects once it commits."""
        if not blob_ids:
            return
        urls = [u for u in session.scalars(select(Blob.location).where(Blob.id.in_(blob_ids)))
                if u is not None]
        session.execute(delete(BlobChunk).where(BlobChunk.blob_id.in_(blob_ids)))
        session.execute(delete(Blob).where(Blob.id.in_(blob_ids)))
        if urls:
            event.listen(session, "after_commit", lambda _s: self.objects.delete(urls), once=True)
