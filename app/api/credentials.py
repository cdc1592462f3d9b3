"""Who a request says it is: an API key, the signed-in browser's cookie, or nobody."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Request

from app.core.errors import Unauthorized
from app.settings import Settings
from app.web.session import cookie_key


@dataclass(frozen=True)
class Credential:
    """Who a request says it is, before any lookup: an API key (from its Authorization
    header, or the signed-in browser's cookie) and whom it acts as without a live one."""

    key: str | None
    bearer: bool  # the key came in Authorization: if unknown, 401 rather than the fallback
    fallback: str | None  # None: TRAINERY_AUTH_REQUIRED

    def owner(self, lookup: Callable[[str], str | None]) -> str:
        """The owner, with lookup giving a key's owner (None: unknown or revoked)."""
        if self.key is not None:
            owner = lookup(self.key)
            if owner is not None:
                return owner
            if self.bearer:
                raise Unauthorized("unknown or revoked API key")
        if self.fallback is None:
            raise Unauthorized("this service needs an API key: send Authorization: Bearer <key>")
        return self.fallback


def credential(request: Request, settings: Settings, authorization: str | None) -> Credential:
    """The request's Credential; Unauthorized for a malformed Authorization header."""
    if authorization is None:
        fallback = None if settings.auth_required else settings.default_owner
        return Credential(cookie_key(request), bearer=False, fallback=fallback)
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("the Authorization header must be 'Bearer <key>'")
    return Credential(token.strip(), bearer=True, fallback=None)
