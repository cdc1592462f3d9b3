"""How the CLI shows jobs, events and metrics on a terminal."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

from rich.console import RenderableType
from rich.progress import Progress
from rich.table import Table
from rich.text import Text

from trainery_client import Event, Job

STATUS_STYLES = {"queued": "yellow", "running": "cyan", "cancelling": "magenta",
                 "succeeded": "green", "failed": "red", "cancelled": "bright_black"}

def status_text(status: str) -> Text:
    """The status, coloured."""
    return Text(status, style=STATUS_STYLES.get(status, ""))


def when(ts: datetime | None) -> str:
    """A timestamp in local time, or `-`."""
    return ts.astimezone().strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def duration(seconds: float) -> str:
    """`1h02m`, `3m05s` or `7s`."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def metrics_text(values: Mapping[str, Any] | None) -> str:
    """`loss 0.1234  accuracy 0.95 ...`: the metrics, without bookkeeping fields."""
    if not values:
        return ""
    return "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in values.items()
                     if k not in ("epoch", "epoch_time_s") and isinstance(v, (int, float, str)))


def best_text(best: Mapping[str, Any], *, short: bool = False) -> str:
    """`val_loss 0.2141 at epoch 6` (short: without the epoch), from the job's `best`."""
    if "monitor" not in best or not isinstance(best.get("value"), (int, float)):
        return "" if short else metrics_text(best)
    epoch = f" at epoch {best['epoch']}" if "epoch" in best and not short else ""
    return f"{best['monitor']} {best['value']:.4g}{epoch}"


def event_text(event: Event) -> Text:
    """One event as a line: time, state change, metrics or log message."""
    text = Text(f"{event.ts.astimezone():%H:%M:%S} ", style="bright_black")
    if event.kind == "state":
        if event.from_status:
            text.append(f"{event.from_status} -> ")
        text.append_text(status_text(event.to_status or "?"))
        text.append(f"  {event.message}")
    elif event.kind == "metrics":
        text.append(f"{event.message}  {metrics_text(event.data)}")
    else:
        text.append(event.message)
    return text


def job_details(job: Job) -> Table:
    """The job as a two-column table (what `trainery status` shows)."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    rows: list[tuple[str, str | Text]] = [
        ("id", job.id), ("name", job.name), ("framework", job.framework),
        ("status", status_text(job.status)), ("attempt", str(job.attempt)),
        ("worker", job.worker or "-"),
        ("progress", f"epoch {job.progress.epoch}/{job.progress.epochs}"),
        ("created", when(job.created_at)), ("started", when(job.started_at)),
        ("finished", when(job.finished_at)),
    ]
    if job.metrics:
        rows.append(("metrics", metrics_text(job.metrics)))
    if job.best:
        rows.append(("best", best_text(job.best)))
    if job.pending_reason:
        rows.append(("waiting", job.pending_reason))
    if job.error:
        rows.append(("error", Text(f"{job.error.type}: {job.error.message}", style="red")))
    for key, value in rows:
        table.add_row(key, value)
    return table


def summary(job: Job) -> Text:
    """The one line printed when a followed job ends."""
    line = Text(f"{job.id} ({job.name}) ")
    line.append_text(status_text(job.status))
    if job.status == "succeeded":
        line.append(f" after {job.progress.epoch} epochs  {metrics_text(job.metrics)}")
    elif job.error:
        line.append(f": {job.error.type}: {job.error.message}")
    return line


class EpochClock:
    """The time left, from the epochs' own durations (replayed epochs would fool a rate)."""

    def __init__(self) -> None:
        self.recent: list[float] = []

    def eta(self, data: Mapping[str, Any], epochs: int) -> str:
        """The time left after this epoch's metrics, from the last five epochs' mean."""
        seconds = data.get("epoch_time_s")
        if isinstance(seconds, (int, float)):
            self.recent = [*self.recent[-4:], float(seconds)]
        if not self.recent or not isinstance(data.get("epoch"), int):
            return "-"
        left = max(epochs - data["epoch"], 0)
        return duration(sum(self.recent) / len(self.recent) * left)


class JobProgress(Progress):
    """A progress bar over epochs with the latest metrics on a line of their own below it."""

    metrics = ""

    def get_renderables(self) -> Iterator[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        if self.metrics:
            yield Text(f"  {self.metrics}", style="bright_black")

