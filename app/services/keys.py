"""API keys: bearer tokens that make a request act as an owner."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.errors import NotFound
from app.models import ApiKey, utcnow

TOKEN_PREFIX = "trn_"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create(session: Session, owner: str, name: str) -> tuple[ApiKey, str]:
    """A new key for owner; (row, token). The token is shown once and never stored."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(id=f"key_{uuid.uuid4().hex[:16]}", owner=owner, name=name,
                 prefix=token[:10], token_sha256=_digest(token))
    session.add(key)
    return key, token


def owner_for(session: Session, token: str) -> str | None:
    """The owner a live token acts as, or None."""
    key = session.scalar(select(ApiKey).where(ApiKey.token_sha256 == _digest(token),
                                              ApiKey.revoked_at.is_(None)))
    return key.owner if key is not None else None


def owners_for(session: Session, tokens: Iterable[str]) -> dict[str, str]:
    """The owner of each live token among tokens, in one statement (unknown ones left out)."""
    by_digest = {_digest(t): t for t in tokens}
    if not by_digest:
        return {}
    rows = session.execute(select(ApiKey.token_sha256, ApiKey.owner)
                           .where(ApiKey.token_sha256.in_(by_digest), ApiKey.revoked_at.is_(None)))
    return {by_digest[digest]: owner for digest, owner in rows}


def list_keys(session: Session, owner: str | None = None) -> list[ApiKey]:
    stmt = select(ApiKey).order_by(ApiKey.created_at)
    if owner is not None:
        stmt = stmt.where(ApiKey.owner == owner)
    return list(session.scalars(stmt))


def revoke(session: Session, key_id: str) -> ApiKey:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFound(f"no key with id {key_id!r}")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
    return key
