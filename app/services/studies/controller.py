"""The study controller: keeps a study's trials going, one SQL transaction per decision round.

A tick locks the study row (SELECT ... FOR UPDATE on PostgreSQL; SQLite's write
transactions are BEGIN IMMEDIATE, so serial anyway), then in that one transaction: syncs
each running trial from its job, ends the study if it is done, and fills free slots with
promotions (asha) or new trials. A new trial takes its number by moving
studies.trials_created from n to n + 1 (a compare-and-set) and (study_id, number) is the
trials' primary key; a promotion is the job's conditional succeeded -> queued transition.
So two controllers, or a tick repeated after a crash, never create a trial twice or lose a
promotion: the loser finds the work done, or rolls back whole. Wake-ups are sent after the
commit; a lost one is re-sent by the workers' reconciler like any job's.

Ticks run (1) in the API right after a study is created, patched or cancelled, (2) in the
worker right after it finishes a trial's job (the low-latency path), and (3) from every
worker's maintenance thread for all studies that need one (the path that survives any
process dying between a job's end and its tick).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.core.errors import DomainError, validation_problems
from app.core.spec import JobSpec
from app.core.states import JobStatus
from app.db import transaction
from app.models import EpochMetrics, Job, Study, StudyTrial, utcnow
from app.schemas.studies import SPACE, Distribution
from app.services import jobs, lifecycle, webhooks
from app.services.studies import asha, sampling
from app.services.studies import space as sp
from app.services.unit_of_work import UnitOfWork
from app.settings import Limits

log = logging.getLogger(__name__)

ACTIVE = "running"  # a trial whose job is queued, running or cancelling
TRIAL_STATES = ("running", "paused", "completed", "pruned", "failed", "cancelled")
LIVE_JOB = {JobStatus.QUEUED.value, JobStatus.RUNNING.value, JobStatus.CANCELLING.value}

Wake = tuple[str, str]  # (job id, queue)
SendWake = Callable[[str, str], object]


class _Lost(Exception):
    """A compare-and-set found the work already done by another controller: roll back."""


def space_of(study: Study) -> dict[str, Distribution]:
    """The study's stored space, parsed back into distributions."""
    return SPACE.validate_python(study.space)


def rungs_of(study: Study) -> list[int] | None:
    """asha's epoch budgets, or None for other searchers."""
    rungs = study.searcher.get("rungs")
    return [int(r) for r in rungs] if rungs is not None else None


def trial_cap(study: Study) -> int:
    """How many trials the study may create (a grid may have fewer points than max_trials)."""
    grid = study.searcher.get("grid_size")
    cap = int(study.searcher["max_trials"])
    return min(cap, int(grid)) if grid else cap


# -- ticks ------------------------------------------------------------------------------


def tick(factory: sessionmaker[Session], study_id: str, limits: Limits) -> list[Wake]:
    """One decision round for the study; the wake-ups to send now that it is committed."""
    with factory() as session:
        if not _needs_tick(session, study_id):
            return []
    try:
        with transaction(factory) as session:
            study = session.scalar(select(Study).where(Study.id == study_id).with_for_update())
            if study is None:
                return []
            wakes: list[Wake] = []
            _sync(session, study)
            if study.state == "running":
                _maybe_end(session, study)
            if study.state == "running":
                wakes = _fill(session, study, limits)
                _maybe_end(session, study)
            return wakes
    except _Lost:
        log.info("study %s: another controller took this decision", study_id)
        return []


def tick_and_wake(factory: sessionmaker[Session], study_id: str, limits: Limits,
                  send_wake: SendWake) -> None:
    """tick(), then send its wake-ups."""
    for job_id, queue in tick(factory, study_id, limits):
        send_wake(job_id, queue)


def after_job(factory: sessionmaker[Session], job_id: str, limits: Limits,
              send_wake: SendWake) -> None:
    """A job just finished: if it is a trial, tick its study at once."""
    with factory() as session:
        study_id = session.scalar(select(StudyTrial.study_id).where(StudyTrial.job_id == job_id))
    if study_id is not None:
        tick_and_wake(factory, study_id, limits, send_wake)


def tick_all(factory: sessionmaker[Session], limits: Limits, send_wake: SendWake) -> int:
    """Tick every running study and every ended one with trials still running; how many."""
    with factory() as session:
        ids = set(session.scalars(select(Study.id).where(Study.state == "running")))
        ids |= set(session.scalars(select(StudyTrial.study_id)
                                   .where(StudyTrial.state == ACTIVE).distinct()))
    for study_id in sorted(ids):
        try:
            tick_and_wake(factory, study_id, limits, send_wake)
        except Exception:  # noqa: BLE001 - one study's bad tick must not stop the others
            log.exception("tick of study %s failed", study_id)
    return len(ids)


def _needs_tick(session: Session, study_id: str) -> bool:
    """A read-only look: is there anything to sync, end, start or promote? (No write lock.)"""
    study = session.get(Study, study_id)
    if study is None:
        return False
    rows = session.execute(
        select(StudyTrial.state, Job.status).outerjoin(Job, Job.id == StudyTrial.job_id)
        .where(StudyTrial.study_id == study_id)).all()
    active = [status for state, status in rows if state == ACTIVE]
    if any(status not in LIVE_JOB for status in active):
        return True  # a trial's job ended: sync it
    if study.state != "running":
        return False
    paused = any(state == "paused" for state, _ in rows)
    free = len(active) < int(study.searcher["max_concurrent_trials"])
    return free and (study.trials_created < trial_cap(study) or paused or not active)


# -- sync: trials follow their jobs -------------------------------------------------------


def _sync(session: Session, study: Study) -> None:
    trials = session.scalars(select(StudyTrial).where(StudyTrial.study_id == study.id,
                                                      StudyTrial.state == ACTIVE)).all()
    for trial in trials:
        job = session.get(Job, trial.job_id) if trial.job_id else None
        if job is None:
            _set(trial, "failed", error="the trial's job no longer exists")
        elif job.status == JobStatus.SUCCEEDED.value:
            _finish(session, study, trial, job)
        elif job.status == JobStatus.FAILED.value:
            _record_values(session, study, trial, job)
            _set(trial, "failed", error=f"{job.error_type}: {job.error_message}")
        elif job.status == JobStatus.CANCELLED.value:
            _record_values(session, study, trial, job)
            _set(trial, "cancelled")


def _set(trial: StudyTrial, state: str, error: str | None = None) -> None:
    trial.state, trial.updated_at = state, utcnow()
    if error is not None:
        trial.error = error


def _finish(session: Session, study: Study, trial: StudyTrial, job: Job) -> None:
    """A trial's job succeeded: it completed, paused at an asha rung, or reported nothing."""
    epochs = _record_values(session, study, trial, job)
    if trial.value is None:
        _set(trial, "failed", error=f"the job reported no {study.objective['metric']!r}")
        return
    rungs = rungs_of(study)
    budget = int(job.spec["training"]["epochs"])
    # Early stopping ended it before its budget: continuing would stop again at once.
    if rungs is not None and trial.rung < len(rungs) - 1 and epochs >= budget:
        _set(trial, "paused")
    else:
        _set(trial, "completed")


def _record_values(session: Session, study: Study, trial: StudyTrial, job: Job) -> int:
    """Store the trial's best objective (and at each rung epoch); the epochs it trained."""
    metric, mode = study.objective["metric"], study.objective["mode"]
    series = {e: float(v[metric]) for e, v in session.execute(
        select(EpochMetrics.epoch, EpochMetrics.values).where(EpochMetrics.job_id == job.id))
        if isinstance(v.get(metric), (int, float))}
    if series:
        pick = max if mode == "max" else min
        epoch = pick(sorted(series), key=lambda e: series[e])
        trial.value, trial.value_epoch = series[epoch], epoch
        trial.rung_values = {str(r): series[r] for r in rungs_of(study) or [] if r in series}
    return max(series, default=job.progress_epoch)


# -- ending --------------------------------------------------------------------------------


def _counts(session: Session, study_id: str) -> dict[str, int]:
    rows = session.execute(select(StudyTrial.state, func.count()).where(
        StudyTrial.study_id == study_id).group_by(StudyTrial.state)).all()
    return {state: n for state, n in rows}


def _maybe_end(session: Session, study: Study) -> None:
    session.flush()
    counts = _counts(session, study.id)
    max_failed = study.searcher.get("max_failed_trials")
    failed = counts.get("failed", 0)
    if max_failed is not None and failed > max_failed:
        end(session, study, "failed", f"{failed} trials failed; max_failed_trials is "
            f"{max_failed}")
        return
    goal, best = study.objective.get("goal"), best_trial(session, study)
    if goal is not None and best is not None and _reaches(best.value, goal,
                                                          study.objective["mode"]):
        end(session, study, "succeeded", f"goal reached: trial {best.number} has "
            f"{study.objective['metric']} = {best.value:.6g}")
        return
    if counts.get(ACTIVE, 0) or study.trials_created < trial_cap(study):
        return
    if rungs_of(study) is not None and _promotion(session, study, exhausted=True):
        return
    if best is None:
        end(session, study, "failed", f"all {study.trials_created} trials ended and none "
            f"reported {study.objective['metric']!r}")
    else:
        end(session, study, "succeeded", f"all {study.trials_created} trials ended")


def _reaches(value: float, goal: float, mode: str) -> bool:
    return value >= goal if mode == "max" else value <= goal


def end(session: Session, study: Study, state: str, reason: str) -> None:
    """End the study: paused trials become pruned (or cancelled), running ones are cancelled."""
    study.state, study.end_reason = state, reason
    study.finished_at = study.updated_at = utcnow()
    trials = session.scalars(select(StudyTrial).where(
        StudyTrial.study_id == study.id, StudyTrial.state.in_([ACTIVE, "paused"]))).all()
    for trial in trials:
        if trial.state == "paused":
            _set(trial, "pruned" if state == "succeeded" else "cancelled")
        elif trial.job_id is not None:
            lifecycle.request_cancel(session, trial.job_id)
    session.flush()
    best = best_trial(session, study)
    webhooks.study_ended(session, study.owner, {
        "id": study.id, "name": study.name, "state": state, "end_reason": reason,
        "trials": _counts(session, study.id),
        "best_trial": vars(best) if best is not None else None})
    log.info("study %s %s: %s", study.id, state, reason)


# -- filling slots ---------------------------------------------------------------------


def _fill(session: Session, study: Study, limits: Limits) -> list[Wake]:
    wakes: list[Wake] = []
    free = int(study.searcher["max_concurrent_trials"]) - _counts(session, study.id).get(ACTIVE, 0)
    while free > 0:
        exhausted = study.trials_created >= trial_cap(study)
        wake = None
        if rungs_of(study) is not None:
            wake = _promote(session, study, exhausted)
        if wake is None and not exhausted:
            wake = _create_trial(session, study, limits)
            if wake is None:  # the spec was invalid: a failed trial; the next tick goes on
                break
        if wake is None:
            break
        wakes.append(wake)
        free -= 1
        session.flush()
    return wakes


def _rung_trials(session: Session, study: Study) -> list[asha.RungTrial]:
    trials = session.scalars(select(StudyTrial).where(StudyTrial.study_id == study.id)).all()
    return [asha.RungTrial(t.number, t.state, t.rung,
                           {int(e): float(v) for e, v in (t.rung_values or {}).items()})
            for t in trials]


def _promotion(session: Session, study: Study, exhausted: bool) -> tuple[int, int] | None:
    rungs = rungs_of(study)
    assert rungs is not None
    return asha.promotion(_rung_trials(session, study), rungs,
                          int(study.searcher["reduction_factor"]), study.objective["mode"],
                          exhausted)


def _promote(session: Session, study: Study, exhausted: bool) -> Wake | None:
    found = _promotion(session, study, exhausted)
    if found is None:
        return None
    number, rung = found
    rungs = rungs_of(study)
    assert rungs is not None
    trial = session.get_one(StudyTrial, (study.id, number))
    job = session.get_one(Job, trial.job_id)
    spec = {**job.spec, "training": {**job.spec["training"], "epochs": rungs[rung]}}
    if not lifecycle.promote(session, job.id, rungs[rung], spec,
                             f"promoted by asha to rung {rung} ({rungs[rung]} epochs); resumes "
                             "from its last checkpoint"):
        raise _Lost()
    trial.rung = rung
    _set(trial, ACTIVE)
    return job.id, job.queue


def _create_trial(session: Session, study: Study, limits: Limits) -> Wake | None:
    """Sample trial number n and submit its job; None if its spec turned out invalid."""
    number = study.trials_created
    taken = session.execute(
        update(Study).where(Study.id == study.id, Study.trials_created == number)
        .values(trials_created=number + 1, updated_at=utcnow()))
    if taken.rowcount != 1:  # type: ignore[attr-defined]
        raise _Lost()
    session.refresh(study)
    space = space_of(study)
    search = study.searcher
    sampler = search["sampler"] if search["name"] == "asha" else search["name"]
    params, attrs = sampling.ask(space, sampler, int(search["seed"]), number, trial_cap(study),
                                 study.objective["mode"], _past(session, study))
    trial = StudyTrial(study_id=study.id, number=number, params=params, sampler_attrs=attrs,
                       state=ACTIVE, rung=0, rung_values={})
    session.add(trial)
    spec_json = sp.apply(study.base, params)
    spec_json["name"] = f"{study.name} #{number}"
    rungs = rungs_of(study)
    if rungs is not None:
        spec_json["training"] = {**spec_json["training"], "epochs": rungs[0]}
    try:
        spec = JobSpec.model_validate(spec_json)
        # The controller sends its own wake-ups once its tick has committed (tick_and_wake).
        job, _ = jobs.submit(UnitOfWork(session), spec, owner=study.owner, limits=limits,
                             idempotency_key=f"{study.id}#{number}")
    except ValidationError as exc:
        _set(trial, "failed", error="; ".join(f"{p['path']}: {p['message']}"
                                              for p in validation_problems(exc.errors())))
        return None
    except DomainError as exc:
        _set(trial, "failed", error=str(exc.detail))
        return None
    trial.job_id = job.id
    lifecycle.add_event(session, job.id, f"trial {number} of study {study.id}",
                        data={"study_id": study.id, "trial": number, "params": params})
    return job.id, job.queue


def _past(session: Session, study: Study) -> list[sampling.PastTrial]:
    trials = session.scalars(select(StudyTrial).where(StudyTrial.study_id == study.id)
                             .order_by(StudyTrial.number)).all()
    return [sampling.PastTrial(t.state, t.value,
                               {int(e): float(v) for e, v in (t.rung_values or {}).items()},
                               dict(t.sampler_attrs or {}))
            for t in trials]


# -- reading -----------------------------------------------------------------------------


class Best:
    """The best trial so far."""

    def __init__(self, trial: StudyTrial) -> None:
        assert trial.value is not None
        self.number, self.job_id, self.params = trial.number, trial.job_id, trial.params
        self.value, self.epoch = float(trial.value), trial.value_epoch


def best_trial(session: Session, study: Study) -> Best | None:
    """The trial with the best objective value recorded so far, or None."""
    order: Any = StudyTrial.value.desc() if study.objective["mode"] == "max" else \
        StudyTrial.value.asc()
    trial = session.scalars(select(StudyTrial).where(StudyTrial.study_id == study.id,
                                                     StudyTrial.value.is_not(None))
                            .order_by(order, StudyTrial.number).limit(1)).first()
    return Best(trial) if trial is not None else None
