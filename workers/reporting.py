"""A runner's only door to the SQL store: metrics, events, checkpoints and models, fenced by attempt."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.blobstore import BlobCorrupt, BlobInfo, BlobMissing, BlobStore
from app.db import transaction
from app.models import Artifact, Blob, Checkpoint, Job
from app.services import lifecycle
from workers.errors import Superseded

log = logging.getLogger(__name__)


@dataclass
class LoadedCheckpoint:
    epoch: int
    payload: bytes


class JobReporter:
    """Writes for one attempt of one job; every write first checks the attempt still owns it."""

    def __init__(self, factory: sessionmaker[Session], blobs: BlobStore, job_id: str,
                 attempt: int) -> None:
        self.factory, self.blobs, self.job_id, self.attempt = factory, blobs, job_id, attempt
        with factory() as session:
            job = session.get_one(Job, job_id)
            self.owner = job.owner
            self.spec: dict[str, Any] = job.spec

    def _fence(self, session: Session) -> None:
        if not lifecycle.is_live(session, self.job_id, self.attempt):
            raise Superseded(f"attempt {self.attempt} of {self.job_id} no longer owns the job")

    def event(self, message: str, data: dict[str, Any] | None = None) -> None:
        """Append a log line to the job's events."""
        with transaction(self.factory) as session:
            lifecycle.add_event(session, self.job_id, message, attempt=self.attempt, data=data)

    def status(self) -> str:
        with self.factory() as session:
            return str(session.scalar(select(Job.status).where(Job.id == self.job_id)))

    def record_epoch(self, epoch: int, epochs: int, logs: dict[str, float],
                     best: dict[str, Any] | None) -> None:
        """One epoch's metrics and the job's progress."""
        with transaction(self.factory) as session:
            if not lifecycle.record_epoch(session, self.job_id, self.attempt, epoch, epochs,
                                          logs, best):
                raise Superseded(f"attempt {self.attempt} of {self.job_id} no longer owns the job")

    def save_checkpoint(self, epoch: int, payload: bytes, metrics: dict[str, float],
                        *, keep_last: int) -> None:
        """Store a checkpoint; it counts only once all its chunks and its hash are committed."""
        # The new row and the pruning of the oldest commit together: one transaction
        # fewer per epoch, and never more than keep_last checkpoints listed.
        with self._new_blob(payload, "checkpoint") as info, transaction(self.factory) as session:
            self._fence(session)
            session.add(Checkpoint(job_id=self.job_id, owner=self.owner, epoch=epoch,
                                   attempt=self.attempt, blob_id=info.id, metrics=metrics))
            session.flush()
            stale = self._prune(session, keep_last)
        for blob_id in stale:
            self.blobs.delete(blob_id)

    @contextmanager
    def _new_blob(self, payload: bytes, kind: str) -> Iterator[BlobInfo]:
        """Store payload; delete it again if the row that would refer to it is not written."""
        info = self.blobs.write_bytes(payload, owner=self.owner, kind=kind)
        try:
            yield info
        except BaseException:
            self.blobs.delete(info.id)
            raise

    def _prune(self, session: Session, keep_last: int) -> list[str]:
        """Delete all but the newest keep_last checkpoint rows; the blobs they held."""
        rows = list(session.scalars(select(Checkpoint).where(Checkpoint.job_id == self.job_id)
                                    .order_by(Checkpoint.epoch.desc(), Checkpoint.id.desc())))
        stale = rows[keep_last:]
        for c in stale:
            session.delete(c)
        return [c.blob_id for c in stale]

    def latest_checkpoint(self) -> LoadedCheckpoint | None:
        """The newest complete checkpoint whose bytes match their hash, if any."""
        with self.factory() as session:
            rows = session.execute(
                select(Checkpoint.epoch, Checkpoint.blob_id).join(Blob, Blob.id == Checkpoint.blob_id)
                .where(Checkpoint.job_id == self.job_id, Blob.complete.is_(True))
                .order_by(Checkpoint.epoch.desc(), Checkpoint.id.desc())).all()
        for epoch, blob_id in rows:
            try:
                return LoadedCheckpoint(epoch, self.blobs.read_bytes(blob_id))
            except (BlobCorrupt, BlobMissing) as exc:
                self.event(f"checkpoint of epoch {epoch} is unusable ({exc}); trying an older one")
        return None

    def save_artifact(self, fmt: str, payload: bytes, filename: str, media_type: str) -> None:
        """Store the trained model in one export format."""
        replaced = None
        with self._new_blob(payload, f"model.{fmt}") as info, \
                transaction(self.factory) as session:
            self._fence(session)
            old = session.get(Artifact, (self.job_id, fmt))
            if old is not None:
                replaced = old.blob_id
                session.delete(old)
                session.flush()
            session.add(Artifact(job_id=self.job_id, format=fmt, owner=self.owner,
                                 blob_id=info.id, filename=filename, media_type=media_type))
        if replaced is not None:
            self.blobs.delete(replaced)

    def set_model_card(self, card: dict[str, Any]) -> None:
        with transaction(self.factory) as session:
            self._fence(session)
            session.get_one(Job, self.job_id).model_card = card
