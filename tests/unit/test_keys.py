"""API key storage: only a hash is kept; revoked keys stop working."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.core.errors import NotFound
from app.db import transaction
from app.models import ApiKey
from app.services import keys


def test_create_lookup_revoke(factory: sessionmaker[Session]) -> None:
    with transaction(factory) as session:
        key, token = keys.create(session, "alice", "laptop")
    with factory() as session:
        stored = session.get_one(ApiKey, key.id)
        assert stored.token_sha256 == hashlib.sha256(token.encode()).hexdigest()
        assert token not in (stored.prefix, stored.name, stored.token_sha256)
        assert keys.owner_for(session, token) == "alice"
        assert keys.owner_for(session, token + "x") is None
    with transaction(factory) as session:
        keys.revoke(session, key.id)
    with factory() as session:
        assert keys.owner_for(session, token) is None
    with transaction(factory) as session, pytest.raises(NotFound):
        keys.revoke(session, "key_missing")
