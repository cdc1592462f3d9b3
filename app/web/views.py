"""Presentation helpers the templates call as filters: numbers, times, durations."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from app.schemas.jobs import JobPublic

LIVE_STATUSES = frozenset({"queued", "running", "cancelling"})


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=timezone.utc)


def fmt_num(value: Any) -> str:
    """A metric value in 4 significant digits; '' for none."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.4g}"


def fmt_time(value: datetime | None) -> str:
    """'2026-12-01 06:41:05 UTC'."""
    if value is None:
        return ""
    return _aware(value).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def fmt_seconds(seconds: float) -> str:
    """'1h 02m', '3m 05s', '12.3s'."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(seconds), 60)
    if m < 60:
        return f"{m}m {s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m"


def duration(job: JobPublic, now: datetime | None = None) -> str:
    """How long the job has run (so far, if it still runs); '' before it starts."""
    if job.started_at is None:
        return ""
    end = job.finished_at or now or datetime.now(timezone.utc)
    return fmt_seconds(max((_aware(end) - _aware(job.started_at)).total_seconds(), 0.0))


def best_text(best: dict[str, Any] | None) -> str:
    """'val_loss 0.1234 (epoch 7)'."""
    if not best or "value" not in best:
        return ""
    return f"{best.get('monitor', '')} {fmt_num(best['value'])} (epoch {best.get('epoch')})"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return ""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def is_live(status: str) -> bool:
    return status in LIVE_STATUSES


FILTERS = {"num": fmt_num, "time": fmt_time, "duration": duration, "best": best_text,
           "bytes": fmt_bytes}
