"""Errors a runner raises, by who is to blame."""


class UserError(Exception):
    """The spec or the data cannot train: the user must change something."""


class Superseded(Exception):
    """This attempt no longer owns the job (another attempt took over, or the job ended)."""
