"""Typed dependencies: what a route needs, said in its signature."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated

from celery import Celery
from fastapi import Depends, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader
from sqlalchemy.orm import Session, sessionmaker

from app.api.admission import Admission
from app.api.credentials import credential
from app.api.followers import EventHub
from app.api.polls import Polls
from app.blobstore import BlobStore
from app.services import dispatch, keys
from app.services.unit_of_work import UnitOfWork
from app.settings import Settings
from app.web.session import COOKIE

# Dependencies that only read app.state are `async def`: FastAPI runs a plain `def`
# dependency on the threadpool, a thread hop per dependency per request.

# Methods whose unit of work only reads; the others take the write lock up front.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# The raw Authorization header, declared as a security scheme so that the OpenAPI
# document says how to authenticate (and /docs offers "Authorize"); _owner parses it.
API_KEY = APIKeyHeader(name="Authorization", auto_error=False, scheme_name="bearer_key",
                       description="an API key as `Bearer <key>` (`trainery keys create`); "
                                   "required when TRAINERY_AUTH_REQUIRED is set")


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def get_sessionmaker(request: Request) -> sessionmaker[Session]:
    return request.app.state.sessionmaker  # type: ignore[no-any-return]


async def get_admission(request: Request) -> Admission:
    return request.app.state.admission  # type: ignore[no-any-return]


async def get_uow(request: Request) -> AsyncIterator[UnitOfWork]:
    """The request's one session: commit on success (then wake-ups), roll back on error.

    Admission comes first, so a request refused with 503 did nothing. The
    session is made here but touches the database only when a route (or auth)
    first uses it; with scope="function" the commit runs before the response
    is sent, so a 2xx means committed.
    """
    state = request.app.state
    engine = state.engine if request.method in READ_METHODS else state.write_engine
    async with state.admission.slot():
        uow = UnitOfWork(state.sessionmaker(bind=engine))
        try:
            yield uow
        except BaseException:
            await run_in_threadpool(dispatch.discard, uow)
            raise
        await run_in_threadpool(dispatch.commit_and_wake, uow, state.celery, state.settings)


async def get_session(uow: Annotated[UnitOfWork, Depends(get_uow, scope="function")]
                      ) -> Session:
    return uow.session


async def get_event_hub(request: Request) -> EventHub:
    return request.app.state.event_hub  # type: ignore[no-any-return]


async def get_blobstore(request: Request) -> BlobStore:
    return request.app.state.blobstore  # type: ignore[no-any-return]


async def get_celery(request: Request) -> Celery:
    return request.app.state.celery


def _owner(request: Request, settings: Settings, authorization: str | None,
           lookup: Callable[[str], str | None]) -> str:
    return credential(request, settings, authorization).owner(lookup)


async def get_owner(request: Request,
                    uow: Annotated[UnitOfWork, Depends(get_uow, scope="function")],
                    settings: Annotated[Settings, Depends(get_settings)],
                    authorization: Annotated[str | None, Security(API_KEY)] = None) -> str:
    """The caller's identity, read in the request's own session: its token's owner, else
    the default owner; with TRAINERY_AUTH_REQUIRED a request without a valid token is refused."""
    def lookup(token: str) -> str | None:
        return keys.owner_for(uow.session, token)

    if authorization is None and COOKIE not in request.cookies:
        return _owner(request, settings, None, lookup)  # no key to look up: no thread hop
    return await run_in_threadpool(_owner, request, settings, authorization, lookup)


async def get_uploader(request: Request, settings: Annotated[Settings, Depends(get_settings)],
                       authorization: Annotated[str | None, Security(API_KEY)] = None) -> str:
    """The caller's identity for a route that streams a long body and so holds no unit of work.

    An upload can take minutes; holding an admission slot (and a connection)
    for all of it would let a few uploads shut everyone else out, so the key is
    checked in a short admitted session of its own.
    """
    admission: Admission = request.app.state.admission
    factory: sessionmaker[Session] = request.app.state.sessionmaker

    def lookup(token: str) -> str | None:
        with factory() as session:
            return keys.owner_for(session, token)

    if authorization is None:
        return _owner(request, settings, None, lookup)
    async with admission.slot():
        return await run_in_threadpool(_owner, request, settings, authorization, lookup)


async def get_polls(request: Request) -> Polls:
    return request.app.state.polls  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_settings)]
UnitOfWorkDep = Annotated[UnitOfWork, Depends(get_uow, scope="function")]
SessionDep = Annotated[Session, Depends(get_session)]
SessionFactoryDep = Annotated[sessionmaker[Session], Depends(get_sessionmaker)]
BlobStoreDep = Annotated[BlobStore, Depends(get_blobstore)]
EventHubDep = Annotated[EventHub, Depends(get_event_hub)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
OwnerDep = Annotated[str, Depends(get_owner)]
UploaderDep = Annotated[str, Depends(get_uploader)]
PollsDep = Annotated[Polls, Depends(get_polls)]
ApiKeyDep = Annotated[str | None, Security(API_KEY)]
