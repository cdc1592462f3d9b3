"""Errors a runner raises, by who is to blame."""

from app.core.errors import UserError

__all__ = ["Superseded", "UserError"]


class Superseded(Exception):
    """This attempt no longer owns the job (another attempt took over, or the job ended)."""
