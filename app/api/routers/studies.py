"""/v1/studies: hyperparameter studies whose trials are ordinary jobs."""

from __future__ import annotations

from typing import Annotated

from celery import Celery
from fastapi import APIRouter, Query, Response
from sqlalchemy.orm import Session, sessionmaker

from app.api.deps import (
    CeleryDep,
    OwnerDep,
    SessionDep,
    SessionFactoryDep,
    SettingsDep,
    UploaderDep,
)
from app.api.errors import (
    BODY_ERRORS,
    COMMON_ERRORS,
    NOT_FOUND,
    NOT_FOUND_OR_CONFLICT,
)
from app.db import transaction
from app.schemas.studies import (
    StudiesPublic,
    StudyCreate,
    StudyPatch,
    StudyPublic,
    TrialPublic,
)
from app.services import dispatch
from app.services.studies import controller
from app.services.studies import service as studies
from app.settings import Settings

router = APIRouter(prefix="/v1/studies", tags=["studies"], responses=COMMON_ERRORS)
# The service checks the state itself (its 422 names the field `state`); listed here so
# that the document says which are accepted.
STATE_QUERY = Query(json_schema_extra={"enum": list(studies.STATES)})


# The writes below run in transactions of their own (the controller's tick must see
# them committed), so they take the caller from UploaderDep, which holds no unit of
# work: OwnerDep's key lookup would open the request's session on the write engine,
# and on SQLite its BEGIN IMMEDIATE would block these transactions until the busy
# timeout (a 503 after 20 s with any API key; found by schemathesis).


def _tick(factory: sessionmaker[Session], celery: Celery, settings: Settings,
          study_id: str) -> None:
    controller.tick_and_wake(factory, study_id, settings.limits,
                             lambda job_id, queue: dispatch.wake(factory, celery, settings,
                                                                 job_id, queue))


def _public(factory: sessionmaker[Session], study_id: str, owner: str) -> StudyPublic:
    with factory() as session:
        return studies.to_public(session, studies.get(session, study_id, owner))


@router.post("", status_code=201, response_model=StudyPublic, responses=BODY_ERRORS)
def create_study(req: StudyCreate, response: Response, factory: SessionFactoryDep,
                 settings: SettingsDep, celery: CeleryDep, owner: UploaderDep) -> StudyPublic:
    """Store the study, then start its first trials."""
    with transaction(factory) as session:
        study = studies.create(session, req, owner, settings.limits)
    _tick(factory, celery, settings, study.id)
    response.headers["Location"] = f"/v1/studies/{study.id}"
    return _public(factory, study.id, owner)


@router.get("", response_model=StudiesPublic)
def list_studies(session: SessionDep, owner: OwnerDep,
                 state: Annotated[str | None, STATE_QUERY] = None,
                 limit: Annotated[int, Query(ge=1, le=200)] = 50,
                 cursor: str | None = None) -> StudiesPublic:
    """The caller's studies, newest first."""
    rows, next_cursor = studies.list_studies(session, owner, state=state, limit=limit,
                                             cursor=cursor)
    return StudiesPublic(data=[studies.to_public(session, s) for s in rows],
                         next_cursor=next_cursor)


@router.get("/{study_id}", response_model=StudyPublic, responses=NOT_FOUND)
def get_study(study_id: str, session: SessionDep, owner: OwnerDep) -> StudyPublic:
    """State and why it ended, trial counts, epochs trained, the best trial."""
    return studies.to_public(session, studies.get(session, study_id, owner))


@router.get("/{study_id}/trials", response_model=list[TrialPublic], responses=NOT_FOUND)
def get_trials(study_id: str, session: SessionDep, owner: OwnerDep) -> list[TrialPublic]:
    """Every trial: params, state, objective, epochs trained, pruned or not, job id."""
    return studies.trials(session, studies.get(session, study_id, owner))


@router.patch("/{study_id}", response_model=StudyPublic,
              responses={**BODY_ERRORS, **NOT_FOUND_OR_CONFLICT})
def patch_study(study_id: str, change: StudyPatch, factory: SessionFactoryDep,
                settings: SettingsDep, celery: CeleryDep, owner: UploaderDep) -> StudyPublic:
    """Change max_trials or max_concurrent_trials while the study runs."""
    with transaction(factory) as session:
        studies.patch(session, study_id, owner, change)
    _tick(factory, celery, settings, study_id)
    return _public(factory, study_id, owner)


@router.post("/{study_id}/cancel", status_code=202, response_model=StudyPublic,
             responses=NOT_FOUND_OR_CONFLICT)
def cancel_study(study_id: str, factory: SessionFactoryDep, owner: UploaderDep) -> StudyPublic:
    """End the study; its queued trials are cancelled at once, running ones at their next
    batch."""
    with transaction(factory) as session:
        studies.cancel(session, study_id, owner)
    return _public(factory, study_id, owner)
