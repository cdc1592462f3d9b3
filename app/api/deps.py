"""Typed dependencies: what a route needs, said in its signature."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from celery import Celery
from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session, sessionmaker

from app.blobstore import BlobStore
from app.core.errors import Unauthorized
from app.services import keys
from app.settings import Settings
from app.web.session import cookie_owner


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_sessionmaker(request: Request) -> sessionmaker[Session]:
    return request.app.state.sessionmaker  # type: ignore[no-any-return]


def get_session(request: Request) -> Iterator[Session]:
    """One session per request: commit on success, roll back on error."""
    factory: sessionmaker[Session] = request.app.state.sessionmaker
    with factory() as session, session.begin():
        yield session


def get_blobstore(request: Request) -> BlobStore:
    return request.app.state.blobstore  # type: ignore[no-any-return]


def get_celery(request: Request) -> Celery:
    return request.app.state.celery  # type: ignore[no-any-return]


def get_owner(request: Request, settings: Annotated[Settings, Depends(get_settings)],
              authorization: Annotated[str | None, Header()] = None) -> str:
    """The caller's identity: the owner of its bearer token, else the default owner.

    With TRAINERY_AUTH_REQUIRED a request without a valid token is refused.
    """
    if authorization is None:
        owner = cookie_owner(request)  # the dashboard's signed-in browser
        if owner is not None:
            return owner
        if settings.auth_required:
            raise Unauthorized("this service needs an API key: send Authorization: Bearer <key>")
        return settings.default_owner
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("the Authorization header must be 'Bearer <key>'")
    factory: sessionmaker[Session] = request.app.state.sessionmaker
    with factory() as session:
        owner = keys.owner_for(session, token.strip())
    if owner is None:
        raise Unauthorized("unknown or revoked API key")
    return owner


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
SessionFactoryDep = Annotated[sessionmaker[Session], Depends(get_sessionmaker)]
BlobStoreDep = Annotated[BlobStore, Depends(get_blobstore)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
OwnerDep = Annotated[str, Depends(get_owner)]
