"""Opaque page cursors for lists newest first: (created_at, id) of a page's last row."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime

from app.core.errors import InvalidInput, problem


def encode(created_at: datetime, row_id: str) -> str:
    """The cursor that continues after the row (created_at, row_id)."""
    raw = json.dumps([created_at.isoformat(), row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str) -> tuple[datetime, str]:
    """(created_at, id) of the row a cursor continues after; 422 on the field `cursor`
    for anything this API did not return."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, row_id = json.loads(raw)
        return datetime.fromisoformat(created), str(row_id)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise InvalidInput([problem(("cursor",), "not a cursor this API returned")]) from exc
