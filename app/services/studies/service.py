"""Studies as the API sees them: create, read, list, change limits, cancel."""

from __future__ import annotations

import uuid

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from app.core.errors import InvalidInput, InvalidTransition, NotFound, problem
from app.models import EpochMetrics, Job, Study, StudyTrial, utcnow
from app.schemas.studies import (
    BestTrial,
    StudyCreate,
    StudyPatch,
    StudyPublic,
    TrialPublic,
)
from app.services import cursors, datasets
from app.services.studies import controller
from app.services.studies.validation import validate
from app.settings import Limits

STATES = ("running", "succeeded", "failed", "cancelled")


class StudyNotFound(NotFound):
    code = "study_not_found"


def create(session: Session, req: StudyCreate, owner: str, limits: Limits) -> Study:
    """Validate and store a running study (its first trials start at the next tick)."""
    data = datasets.check_job_dataset(session, req.base, owner)
    plan = validate(req, limits, data)
    searcher = req.searcher.model_dump(exclude_none=True)
    searcher["grid_size"], searcher["rungs"] = plan.grid_size, plan.rungs
    study = Study(id=f"study_{uuid.uuid4().hex[:24]}", owner=owner, name=req.name,
                  base=plan.base, space={k: v.model_dump() for k, v in req.space.items()},
                  objective=req.objective.model_dump(),
                  searcher={k: v for k, v in searcher.items() if v is not None},
                  state="running", trials_created=0)
    session.add(study)
    session.flush()
    return study


def get(session: Session, study_id: str, owner: str, lock: bool = False) -> Study:
    """The owner's study, or StudyNotFound."""
    stmt = select(Study).where(Study.id == study_id, Study.owner == owner)
    study = session.scalar(stmt.with_for_update() if lock else stmt)
    if study is None:
        raise StudyNotFound(f"no study with id {study_id!r}")
    return study


def list_studies(session: Session, owner: str, *, state: str | None, limit: int,
                 cursor: str | None) -> tuple[list[Study], str | None]:
    """A page of the owner's studies, newest first, and the next page's cursor."""
    stmt = select(Study).where(Study.owner == owner)
    if state is not None:
        if state not in STATES:
            raise InvalidInput([problem(("state",), f"unknown state {state!r}; choose one of "
                                        + ", ".join(STATES))])
        stmt = stmt.where(Study.state == state)
    if cursor is not None:
        created, last_id = cursors.decode(cursor)
        stmt = stmt.where(or_(Study.created_at < created,
                              and_(Study.created_at == created, Study.id < last_id)))
    rows = list(session.scalars(stmt.order_by(Study.created_at.desc(), Study.id.desc())
                                .limit(limit + 1)))
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = cursors.encode(last.created_at, last.id)
    return rows[:limit], next_cursor


def patch(session: Session, study_id: str, owner: str, change: StudyPatch) -> Study:
    """Change max_trials / max_concurrent_trials of a running study."""
    study = get(session, study_id, owner, lock=True)
    if study.state != "running":
        raise InvalidTransition(f"study {study.id} is {study.state}; only a running study "
                                "can be changed")
    if change.max_trials is not None and change.max_trials < study.trials_created:
        raise InvalidInput([problem(("max_trials",), f"the study has already created "
                                    f"{study.trials_created} trials; max_trials cannot be lower")])
    searcher = dict(study.searcher)
    searcher.update(change.model_dump(exclude_none=True))
    study.searcher, study.updated_at = searcher, utcnow()
    return study


def cancel(session: Session, study_id: str, owner: str) -> Study:
    """End a running study as cancelled and cancel its running trials."""
    study = get(session, study_id, owner, lock=True)
    if study.state != "running":
        raise InvalidTransition(f"study {study.id} is {study.state}; only a running study "
                                "can be cancelled")
    controller.end(session, study, "cancelled", "cancelled by the user")
    return study


def to_public(session: Session, study: Study) -> StudyPublic:
    """The study as the API shows it, with trial counts, epochs trained and the best trial."""
    counts = {state: 0 for state in controller.TRIAL_STATES}
    for state, n in session.execute(select(StudyTrial.state, func.count()).where(
            StudyTrial.study_id == study.id).group_by(StudyTrial.state)).all():
        counts[state] = n
    counts["total"] = sum(counts.values())
    epochs = session.scalar(select(func.coalesce(func.sum(Job.progress_epoch), 0))
                            .join(StudyTrial, StudyTrial.job_id == Job.id)
                            .where(StudyTrial.study_id == study.id))
    best = controller.best_trial(session, study)
    return StudyPublic(
        id=study.id, name=study.name, state=study.state, end_reason=study.end_reason,
        created_at=study.created_at, updated_at=study.updated_at,
        finished_at=study.finished_at, objective=study.objective,
        searcher={k: v for k, v in study.searcher.items() if k not in ("rungs", "grid_size")},
        space=study.space, base=study.base, rungs=controller.rungs_of(study), trials=counts,
        epochs_trained=int(epochs or 0),
        best_trial=BestTrial(number=best.number, job_id=best.job_id, params=best.params,
                             value=best.value, epoch=best.epoch) if best else None)


def trials(session: Session, study: Study) -> list[TrialPublic]:
    """Every trial of the study, by number, with its job's status and epochs trained."""
    rows = session.execute(
        select(StudyTrial, Job.status, Job.progress_epoch)
        .outerjoin(Job, Job.id == StudyTrial.job_id)
        .where(StudyTrial.study_id == study.id).order_by(StudyTrial.number)).all()
    rungs = controller.rungs_of(study)
    return [TrialPublic(number=t.number, job_id=t.job_id, job_status=status, state=t.state,
                        pruned=t.state == "pruned", params=t.params, value=t.value,
                        value_epoch=t.value_epoch, epochs_trained=int(epochs or 0),
                        rung=t.rung if rungs is not None else None, error=t.error,
                        created_at=t.created_at, updated_at=t.updated_at)
            for t, status, epochs in rows]


def best_over_time(session: Session, study: Study) -> list[dict[str, float | int]]:
    """The best objective so far over the study's time: one point (`t` seconds since the
    study was created, `value`, the `trial` that set it) at each improvement, read from
    the trials' epoch metrics in time order, and one more where the last epoch ended. Only
    improvements are kept, so the answer stays small however many epochs were trained."""
    metric, maximise = study.objective["metric"], study.objective["mode"] == "max"
    numbers = dict(session.execute(select(StudyTrial.job_id, StudyTrial.number).where(
        StudyTrial.study_id == study.id, StudyTrial.job_id.is_not(None))).tuples().all())
    rows = session.execute(
        select(EpochMetrics.job_id, EpochMetrics.values, EpochMetrics.created_at)
        .where(EpochMetrics.job_id.in_(list(numbers)))
        .order_by(EpochMetrics.created_at, EpochMetrics.job_id, EpochMetrics.epoch)
        .execution_options(yield_per=1000))
    points: list[dict[str, float | int]] = []
    best: float | None = None
    last_t = 0.0
    for job_id, values, created in rows.tuples():
        value = values.get(metric)
        if not isinstance(value, (int, float)):
            continue
        last_t = round(max((created - study.created_at).total_seconds(), 0.0), 3)
        if best is None or (value > best if maximise else value < best):
            best = float(value)
            points.append({"t": last_t, "value": best, "trial": numbers[job_id]})
    if points and points[-1]["t"] < last_t:  # the best held until the last epoch seen
        points.append({**points[-1], "t": last_t})
    return points
