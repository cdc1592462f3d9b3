"""The browser's session: a signed cookie holding a CSRF token and, once signed in, an API key.

The cookie is HttpOnly and SameSite=Strict; its signature (itsdangerous) uses
TRAINERY_WEB_SECRET, or a secret generated once into the data directory.
"""

from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy.orm import Session, sessionmaker

from app.services import keys
from app.settings import Settings

COOKIE = "trainery_session"
CSRF_HEADER = "x-csrf-token"
# A signed-in browser signs in again after a week.
MAX_AGE_S = 7 * 24 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SECRET_FILE = "web_secret"


@dataclass(frozen=True)
class WebSession:
    """What the cookie carries."""

    csrf: str
    key: str | None = None


class SignInRequired(Exception):
    """A page was asked for without a valid key while the service requires one."""


class CsrfRejected(Exception):
    """A state-changing request without the session's CSRF token."""


def load_secret(settings: Settings) -> str:
    """The signing secret: the setting, else one generated into the data dir (kept 0600)."""
    if settings.web_secret:
        return settings.web_secret
    path = Path(settings.data_dir) / SECRET_FILE
    if not path.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        # O_EXCL: when two processes race, one writes and both then read the same secret.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


def _serializer(request: Request) -> URLSafeTimedSerializer:
    state = request.app.state
    if getattr(state, "web_serializer", None) is None:
        state.web_serializer = URLSafeTimedSerializer(load_secret(state.settings),
                                                      salt="trainery-web-session")
    return state.web_serializer  # type: ignore[no-any-return]


def read(request: Request) -> WebSession | None:
    """The session in the request's cookie, or None when absent, forged or expired."""
    raw = request.cookies.get(COOKIE)
    if not raw:
        return None
    try:
        data = _serializer(request).loads(raw, max_age=MAX_AGE_S)
    except BadSignature:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("csrf"), str):
        return None
    key = data.get("key")
    return WebSession(csrf=data["csrf"], key=key if isinstance(key, str) else None)


def new_session(key: str | None = None) -> WebSession:
    return WebSession(csrf=secrets.token_urlsafe(32), key=key)


def write(request: Request, response: Response, session: WebSession | None) -> None:
    """Set (or, for None, clear) the cookie on response."""
    secure = request.url.scheme == "https"
    if session is None:
        response.delete_cookie(COOKIE, path="/", secure=secure, httponly=True, samesite="strict")
        return
    value = _serializer(request).dumps({"csrf": session.csrf, "key": session.key})
    response.set_cookie(COOKIE, value, max_age=MAX_AGE_S, path="/", secure=secure,
                        httponly=True, samesite="strict")


def csrf_ok(session: WebSession | None, token: str | None) -> bool:
    """Whether token is the session's CSRF token (constant-time)."""
    return (session is not None and token is not None
            and hmac.compare_digest(session.csrf.encode(), token.encode()))


def owner_for_key(request: Request, key: str | None) -> str | None:
    """The owner a live API key acts as, or None."""
    if not key:
        return None
    factory: sessionmaker[Session] = request.app.state.sessionmaker
    with factory() as db:
        return keys.owner_for(db, key)


def cookie_key(request: Request) -> str | None:
    """The API key of the signed-in browser's cookie, for the JSON API; state changes also
    need the CSRF header.

    Lets the pages' scripts (EventSource, downloads, uploads) use /v1 as the signed-in user.
    """
    session = read(request)
    if session is None or session.key is None:
        return None
    if request.method not in SAFE_METHODS and not csrf_ok(session,
                                                          request.headers.get(CSRF_HEADER)):
        return None
    return session.key


def page_owner(request: Request, session: WebSession | None) -> str:
    """Who a page is for: the key's owner, else the default owner unless keys are required."""
    settings: Settings = request.app.state.settings
    owner = owner_for_key(request, session.key if session else None)
    if owner is not None:
        return owner
    if settings.auth_required:
        raise SignInRequired()
    return settings.default_owner
