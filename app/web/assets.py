"""The pages' static files, linked by content hash so that browsers can keep them."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

STATIC_DIR = Path(__file__).parent / "static"


class CachedStatic(StaticFiles):
    """Static files the pages link with ?v=<content hash>: browsers keep them a year."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        return response


def _static_version() -> str:
    digest = hashlib.sha256()
    for path in sorted(STATIC_DIR.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(STATIC_DIR).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


STATIC_VERSION = _static_version()


def static_url(path: str) -> str:
    """/static/<path>?v=<hash of every static file>: a new release is a new URL."""
    return f"/static/{path}?v={STATIC_VERSION}"
