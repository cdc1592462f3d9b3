"""The runner's writes: fenced by attempt, and a torn or corrupt checkpoint never wins."""

from __future__ import annotations

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from app.blobstore import BlobStore
from app.db import transaction
from app.models import Blob, BlobChunk, Checkpoint, EpochMetrics, Job, JobEvent
from app.services import lifecycle, steps
from tests.unit.test_lifecycle import new_job
from workers.errors import Superseded
from workers.reporting import JobReporter


def reporter(factory: sessionmaker[Session]) -> JobReporter:
    job_id = new_job(factory)
    with transaction(factory) as session:
        assert lifecycle.claim(session, job_id, "w") == 1
    return JobReporter(factory, BlobStore(factory, chunk_bytes=1024), job_id, 1)


def test_keeps_the_newest_checkpoints(factory: sessionmaker[Session]) -> None:
    r = reporter(factory)
    for epoch in (1, 2, 3):
        r.save_checkpoint(epoch, bytes([epoch]) * 3000, {"loss": 1.0 / epoch}, keep_last=2)
    latest = r.latest_checkpoint()
    assert latest is not None and latest.epoch == 3 and latest.payload == b"\x03" * 3000
    with factory() as session:
        assert session.query(Checkpoint).count() == 2


def test_a_torn_or_corrupt_latest_checkpoint_falls_back_to_the_previous(
        factory: sessionmaker[Session]) -> None:
    r = reporter(factory)
    r.save_checkpoint(1, b"a" * 3000, {}, keep_last=5)
    r.save_checkpoint(2, b"b" * 3000, {}, keep_last=5)
    r.save_checkpoint(3, b"c" * 3000, {}, keep_last=5)
    with transaction(factory) as session:
        rows = {c.epoch: c.blob_id for c in session.query(Checkpoint)}
        # Epoch 3 was cut off mid-write (never completed); epoch 2's bytes rotted.
        session.execute(update(Blob).where(Blob.id == rows[3]).values(complete=False))
        session.execute(update(BlobChunk).where(BlobChunk.blob_id == rows[2], BlobChunk.seq == 0)
                        .values(data=b"x" * 1024))
    latest = r.latest_checkpoint()
    assert latest is not None and latest.epoch == 1 and latest.payload == b"a" * 3000


def test_a_superseded_attempt_cannot_write(factory: sessionmaker[Session]) -> None:
    r = reporter(factory)
    with transaction(factory) as session:
        lifecycle.reap_lost(session, r.job_id, 1, 0, 3, 30)
        lifecycle.claim(session, r.job_id, "other")
    with pytest.raises(Superseded):
        r.record_epoch(1, 2, {"loss": 1.0}, None)
    with pytest.raises(Superseded):
        r.save_checkpoint(1, b"z" * 10, {}, keep_last=2)
    with pytest.raises(Superseded):
        r.save_artifact("torchscript", b"model", "model.pt", "application/octet-stream")
    with factory() as session:  # nothing left behind by the refused writes
        assert session.query(Blob).count() == 0


def write_behind_reporter(factory: sessionmaker[Session]) -> JobReporter:
    plain = reporter(factory)
    return JobReporter(factory, plain.blobs, plain.job_id, 1, write_behind=True)


def test_write_behind_lands_every_write_in_order_off_the_calling_thread(
        factory: sessionmaker[Session]) -> None:
    r = write_behind_reporter(factory)
    assert r.write_gate is not None
    with r.write_gate:  # the writer is held back: the calls return without touching SQL
        r.record_epoch(1, 3, {"loss": 0.5}, None)
        r.save_checkpoint(1, b"c" * 3000, {"loss": 0.5}, keep_last=2)
        r.event("after epoch 1")
        with factory() as session:
            assert session.query(EpochMetrics).count() == 0
            assert session.query(Checkpoint).count() == 0
    r.record_epoch(2, 3, {"loss": 0.25}, None)  # first waits for epoch 1's writes
    with factory() as session:  # epoch 1 has landed; epoch 2 may have, by now, or not
        epochs = [m.epoch for m in session.query(EpochMetrics).order_by(EpochMetrics.epoch)]
        assert epochs[:1] == [1]
        assert session.query(Checkpoint).count() == 1
    r.close()
    with factory() as session:
        assert sorted(m.epoch for m in session.query(EpochMetrics)) == [1, 2]
        messages = [e.message for e in session.query(JobEvent).order_by(JobEvent.id)
                    if e.attempt == 1]
    assert messages[-3:] == ["epoch 1/3", "after epoch 1", "epoch 2/3"]
    assert r.background_seconds > 0


def test_write_behind_raises_a_refused_write_at_the_next_call_and_writes_nothing_after(
        factory: sessionmaker[Session]) -> None:
    r = write_behind_reporter(factory)
    with transaction(factory) as session:
        lifecycle.reap_lost(session, r.job_id, 1, 0, 3, 30)
        lifecycle.claim(session, r.job_id, "other")
    r.record_epoch(1, 2, {"loss": 1.0}, None)  # queued: the refusal comes back later
    with pytest.raises(Superseded):
        r.flush()
    with pytest.raises(Superseded):  # the error sticks: a runner must stop writing
        r.save_checkpoint(1, b"z" * 10, {}, keep_last=2)
    with pytest.raises(Superseded):
        r.close()
    with factory() as session:
        assert session.query(EpochMetrics).count() == 0
        assert session.query(Blob).count() == 0


@pytest.mark.parametrize("size", [500, 3000], ids=["one-chunk", "three-chunks"])
def test_an_epoch_and_its_checkpoint_commit_together(factory: sessionmaker[Session],
                                                     size: int) -> None:
    r = reporter(factory)
    r.record_epoch(1, 3, {"loss": 0.5}, None, checkpoint=b"e" * size, keep_last=1)
    r.record_epoch(2, 3, {"loss": 0.4}, None, checkpoint=b"f" * size, keep_last=1)
    latest = r.latest_checkpoint()
    assert latest is not None and latest.epoch == 2 and latest.payload == b"f" * size
    with factory() as session:
        assert session.query(Checkpoint).count() == 1  # keep_last pruned epoch 1 and its blob
        assert session.query(Blob).count() == 1
        job = session.get_one(Job, r.job_id)
        assert job.progress_epoch == 2
    # A superseded attempt's epoch leaves neither its metrics nor its checkpoint behind.
    with transaction(factory) as session:
        lifecycle.reap_lost(session, r.job_id, 1, 0, 3, 30)
        lifecycle.claim(session, r.job_id, "other")
    with pytest.raises(Superseded):
        r.record_epoch(3, 3, {"loss": 0.3}, None, checkpoint=b"g" * size, keep_last=1)
    with factory() as session:
        assert session.query(EpochMetrics).count() == 2
        assert (session.query(Blob).count() == 1
                and session.query(BlobChunk).count() == -(-size // 1024))


class _Flushes:
    """A reporter that only counts what EpochRecorder asks of it."""

    def __init__(self) -> None:
        self.flushes = 0
        self.epochs: list[int] = []

    def record_epoch(self, epoch: int, *_: object, **__: object) -> None:
        self.epochs.append(epoch)

    def flush(self) -> None:
        self.flushes += 1


class _Trainer:
    epochs, stop_training = 3, False

    def checkpoint_bytes(self, epoch: int) -> bytes:
        return b"x"


def test_an_epochs_writes_must_land_early_in_the_next_epoch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import workers.callbacks
    from workers.callbacks import BestTracker, EpochRecorder

    now = [100.0]
    monkeypatch.setattr(workers.callbacks.time, "perf_counter", lambda: now[0])
    reporter = _Flushes()
    recorder = EpochRecorder(reporter, BestTracker("loss", "min"), 1, 2)  # type: ignore[arg-type]
    trainer = _Trainer()
    recorder.on_epoch_begin(trainer, 1)  # type: ignore[arg-type]
    recorder.on_batch_end(trainer, 0)  # type: ignore[arg-type]
    recorder.on_epoch_end(trainer, 1, {"loss": 1.0, "epoch_time_s": 4.0})  # type: ignore[arg-type]
    assert reporter.epochs == [1] and reporter.flushes == 0  # nothing was pending before
    recorder.on_epoch_begin(trainer, 2)  # type: ignore[arg-type]
    now[0] += 0.19  # 5% of a 4 s epoch is 0.2 s: the write may still overlap training
    recorder.on_batch_end(trainer, 0)  # type: ignore[arg-type]
    assert reporter.flushes == 0
    now[0] += 0.02
    recorder.on_batch_end(trainer, 1)  # type: ignore[arg-type]
    recorder.on_batch_end(trainer, 2)  # type: ignore[arg-type]
    assert reporter.flushes == 1  # waited once, at the first batch past the lag
    recorder.on_epoch_end(trainer, 2, {"loss": 0.5, "epoch_time_s": 0.1})  # type: ignore[arg-type]
    recorder.on_epoch_begin(trainer, 3)  # type: ignore[arg-type]
    now[0] += recorder.MIN_WRITE_LAG_S - 0.001  # a short epoch still gets the 50 ms floor
    recorder.on_batch_end(trainer, 0)  # type: ignore[arg-type]
    assert reporter.flushes == 1


def test_steps_land_with_their_epoch_and_a_redone_step_replaces_its_row(
        factory: sessionmaker[Session]) -> None:
    r = reporter(factory)
    r.record_steps([(1, {"loss": 4.0, "lr": 0.1}), (2, {"loss": float("nan"), "lr": 0.1})])
    r.record_epoch(1, 2, {"loss": 1.0}, None, steps=[(3, {"loss": 3.0, "lr": 0.1})])
    # A resumed attempt trains steps 2-3 again: the rows are replaced, not added.
    r.record_epoch(1, 2, {"loss": 1.0}, None, steps=[(2, {"loss": 2.5, "lr": 0.1}),
                                                      (3, {"loss": 2.0, "lr": 0.1})])
    with factory() as session:
        out = steps.series(session, r.job_id, 1000)
    assert out["steps"] == [1, 2, 3] and out["bucket_steps"] == 1
    assert out["metrics"]["loss"] == {"min": [4.0, 2.5, 2.0], "max": [4.0, 2.5, 2.0],
                                      "last": [4.0, 2.5, 2.0]}
    r.record_steps([(2, {"loss": float("inf")})])  # not finite: stored as null
    with factory() as session:
        assert steps.series(session, r.job_id, 1000)["metrics"]["loss"]["last"][1] is None


def test_the_step_series_keeps_each_buckets_min_max_and_last(
        factory: sessionmaker[Session]) -> None:
    r = reporter(factory)
    values = {s: 1.0 / s for s in range(1, 1001)}
    values[537] = 50.0  # a spike downsampling must not lose
    r.record_steps([(s, {"loss": v}) for s, v in values.items()])
    with factory() as session:
        out = steps.series(session, r.job_id, 10)
    assert out["bucket_steps"] == 100 and out["steps"] == list(range(100, 1001, 100))
    loss = out["metrics"]["loss"]
    assert max(loss["max"]) == 50.0 and loss["max"][5] == 50.0
    assert loss["min"][0] == values[100] and loss["last"] == [values[s] for s in out["steps"]]
    with factory() as session:
        assert steps.series(session, "nope", 10)["steps"] == []
