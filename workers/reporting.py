"""A runner's only door to the SQL store: metrics, events, checkpoints and models, fenced
by attempt."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session, sessionmaker

from app.blobstore import BlobCorrupt, BlobInfo, BlobMissing, BlobStore
from app.db import transaction
from app.models import Artifact, Blob, Checkpoint, Job
from app.services import lifecycle
from app.services import steps as step_store
from workers.errors import Superseded

log = logging.getLogger(__name__)


@dataclass
class LoadedCheckpoint:
    epoch: int
    payload: bytes


class WriteBehind:
    """Runs writes in order on one background thread, so a training loop never waits on SQL.

    The first write that fails stops the rest; its exception is raised to the caller at
    the next `submit` or `flush` (for a runner: at the next epoch end, or at exit).
    """

    def __init__(self, name: str) -> None:
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._error: BaseException | None = None
        self.busy_s = 0.0  # time spent writing, on the background thread
        # Held by the writer around each write; whoever else holds it holds writes back
        # (a benchmark does, to keep them out of a reference loop's time).
        self.gate = threading.Lock()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (write := self._queue.get()) is not None:
            try:
                if self._error is None:
                    with self.gate:
                        start = time.perf_counter()
                        write()
                        self.busy_s += time.perf_counter() - start
            except BaseException as exc:  # noqa: BLE001 - handed to the training thread
                self._error = exc
            finally:
                self._queue.task_done()
        self._queue.task_done()

    def submit(self, write: Callable[[], None]) -> None:
        self.raise_failure()
        self._queue.put(write)

    def flush(self) -> None:
        """Wait until every submitted write is done; raise the first one's error, if any."""
        self._queue.join()
        self.raise_failure()

    def raise_failure(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Finish the queued writes and stop the thread; raise the first write error."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self.raise_failure()


class JobReporter:
    """Writes for one attempt of one job; every write first checks the attempt still owns it.

    With `write_behind` (what runners use), a training loop's writes (epoch metrics,
    checkpoints, events) go to SQL in order on a background thread while the next
    epoch trains; the store is never more than one epoch behind (`record_epoch` first
    waits for the previous epoch's writes), and reads, model writes and `close` wait
    for all of them. A write's error (`Superseded` when the attempt lost the job)
    surfaces at the next epoch end or at `close`.
    """

    def __init__(self, factory: sessionmaker[Session], blobs: BlobStore, job_id: str,
                 attempt: int, *, write_behind: bool = False) -> None:
        self.factory, self.blobs, self.job_id, self.attempt = factory, blobs, job_id, attempt
        with factory() as session:
            job = session.get_one(Job, job_id)
            self.owner = job.owner
            self.spec: dict[str, Any] = job.spec
        self._behind = WriteBehind(f"writes-{job_id}") if write_behind else None

    def _write(self, write: Callable[[], None]) -> None:
        if self._behind is None:
            write()
        else:
            self._behind.submit(write)

    def flush(self) -> None:
        """Wait for the queued writes; raise the first one's error."""
        if self._behind is not None:
            self._behind.flush()

    def close(self) -> None:
        """Land every queued write and stop the writer thread (a runner calls it on exit)."""
        if self._behind is not None:
            self._behind.close()

    @property
    def write_gate(self) -> threading.Lock | None:
        """The write-behind thread's gate (see WriteBehind.gate); None without write-behind."""
        return None if self._behind is None else self._behind.gate

    @property
    def background_seconds(self) -> float:
        """Time the writer thread has spent on writes (0 without write-behind)."""
        return 0.0 if self._behind is None else self._behind.busy_s

    def _fence(self, session: Session) -> None:
        if not lifecycle.is_live(session, self.job_id, self.attempt):
            raise Superseded(f"attempt {self.attempt} of {self.job_id} no longer owns the job")

    def event(self, message: str, data: dict[str, Any] | None = None) -> None:
        """Append a log line to the job's events."""
        def write() -> None:
            with transaction(self.factory) as session:
                lifecycle.add_event(session, self.job_id, message, attempt=self.attempt,
                                    data=data)
        self._write(write)

    def status(self) -> str:
        with self.factory() as session:
            return str(session.scalar(select(Job.status).where(Job.id == self.job_id)))

    def record_epoch(self, epoch: int, epochs: int, logs: dict[str, float],
                     best: dict[str, Any] | None, *, checkpoint: bytes | None = None,
                     keep_last: int = 1, steps: step_store.StepLogs = ()) -> None:
        """One epoch's metrics (and its logged steps not yet written) and the job's
        progress, and its checkpoint when one is due, committed together: the progress
        never runs ahead of the checkpoint."""
        self.flush()  # the previous epoch's writes have landed: never more than one behind
        logs, best, steps = dict(logs), None if best is None else dict(best), list(steps)

        def progress(session: Session) -> None:
            if not lifecycle.record_epoch(session, self.job_id, self.attempt, epoch, epochs,
                                          logs, best):
                raise Superseded(f"attempt {self.attempt} of {self.job_id} no longer owns the job")
            step_store.record(session, self.job_id, steps)

        if checkpoint is None:
            self._write(lambda: self._commit(progress))
        else:
            self._write(lambda: self._commit_checkpoint(epoch, checkpoint, logs, keep_last,
                                                        progress))

    def record_steps(self, steps: step_store.StepLogs) -> None:
        """Logged steps on their own (mid-epoch), in one statement."""
        steps = list(steps)
        if not steps:
            return

        def write(session: Session) -> None:
            self._fence(session)
            step_store.record(session, self.job_id, steps)
        self._write(lambda: self._commit(write))

    def save_checkpoint(self, epoch: int, payload: bytes, metrics: dict[str, Any],
                        *, keep_last: int) -> None:
        """A checkpoint on its own (training stopped mid-epoch)."""
        metrics = dict(metrics)
        self._write(lambda: self._commit_checkpoint(epoch, payload, metrics, keep_last,
                                                    self._fence))

    def _commit(self, claim: Callable[[Session], None]) -> None:
        with transaction(self.factory) as session:
            claim(session)

    def _commit_checkpoint(self, epoch: int, payload: bytes, metrics: dict[str, Any],
                           keep_last: int, claim: Callable[[Session], None]) -> None:
        """Store a checkpoint in the transaction of claim (the fence, or the epoch's
        progress) and prune the oldest; it counts only once its bytes and hash are in."""
        if len(payload) <= self.blobs.chunk_bytes:
            # The common case: blob, row, progress and pruning in one commit.
            with transaction(self.factory) as session:
                claim(session)
                info = self.blobs.add_small(session, payload, owner=self.owner, kind="checkpoint")
                self._add_checkpoint(session, epoch, info.id, metrics)
                self.blobs.delete_in(session, self._prune(session, keep_last))
            return
        # A large checkpoint streams in chunk by chunk first (short transactions, so
        # other writers are not blocked); its row goes in once every chunk has.
        with self._new_blob(payload, "checkpoint") as info, transaction(self.factory) as session:
            claim(session)
            self._add_checkpoint(session, epoch, info.id, metrics)
            self.blobs.delete_in(session, self._prune(session, keep_last))

    def _add_checkpoint(self, session: Session, epoch: int, blob_id: str,
                        metrics: dict[str, Any]) -> None:
        session.execute(insert(Checkpoint).values(
            job_id=self.job_id, owner=self.owner, epoch=epoch, attempt=self.attempt,
            blob_id=blob_id, metrics=metrics))

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
        rows = session.execute(select(Checkpoint.id, Checkpoint.blob_id)
                               .where(Checkpoint.job_id == self.job_id)
                               .order_by(Checkpoint.epoch.desc(), Checkpoint.id.desc())).all()
        stale = rows[keep_last:]
        if stale:
            session.execute(delete(Checkpoint).where(Checkpoint.id.in_([r.id for r in stale])))
        return [r.blob_id for r in stale]

    def latest_checkpoint(self) -> LoadedCheckpoint | None:
        """The newest complete checkpoint whose bytes match their hash, if any."""
        self.flush()
        with self.factory() as session:
            rows = session.execute(
                select(Checkpoint.epoch, Checkpoint.blob_id)
                .join(Blob, Blob.id == Checkpoint.blob_id)
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
        self.flush()
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
        self.flush()
        with transaction(self.factory) as session:
            self._fence(session)
            session.get_one(Job, self.job_id).model_card = card


class ReplicaReporter(JobReporter):
    """A data-parallel job's non-leader rank: it reads the job (spec, checkpoints) like the
    leader and writes nothing; the leader alone records metrics, checkpoints and models."""

    def event(self, message: str, data: dict[str, Any] | None = None) -> None:
        pass

    def record_epoch(self, epoch: int, epochs: int, logs: dict[str, float],
                     best: dict[str, Any] | None, *, checkpoint: bytes | None = None,
                     keep_last: int = 1, steps: step_store.StepLogs = ()) -> None:
        pass

    def record_steps(self, steps: step_store.StepLogs) -> None:
        pass

    def save_checkpoint(self, epoch: int, payload: bytes, metrics: dict[str, Any],
                        *, keep_last: int) -> None:
        pass

    def save_artifact(self, fmt: str, payload: bytes, filename: str, media_type: str) -> None:
        pass

    def set_model_card(self, card: dict[str, Any]) -> None:
        pass
