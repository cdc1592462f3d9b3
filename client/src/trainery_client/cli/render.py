"""How the CLI shows jobs, events, metrics and studies on a terminal."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.progress import Progress
from rich.table import Column, Table
from rich.text import Text

from trainery_client import Event, Job, Study, Trial

STATUS_STYLES = {"queued": "yellow", "running": "cyan", "cancelling": "magenta",
                 "succeeded": "green", "failed": "red", "cancelled": "bright_black"}

def status_text(status: str) -> Text:
    """The status, coloured."""
    return Text(status, style=STATUS_STYLES.get(status, ""))


def when(ts: datetime | None) -> str:
    """A timestamp in local time, or `-`."""
    return ts.astimezone().strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def short_time(ts: datetime | None) -> str:
    """`12-01 14:05` in local time (a list's column), or ``."""
    return ts.astimezone().strftime("%m-%d %H:%M") if ts else ""


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



# -- studies ---------------------------------------------------------------------

TRIAL_STYLES = {"running": "cyan", "paused": "yellow", "completed": "green", "pruned": "blue",
                "failed": "red", "cancelled": "bright_black"}


def value_text(value: Any) -> str:
    """A parameter or objective value, short: floats to 4 significant digits."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))[:40]
    return "-" if value is None else str(value)


def param_names(paths: Iterable[str]) -> dict[str, str]:
    """A column title for each searched spec path: its last field, or the whole path
    where two paths end alike (`model.layers[0].units`, `model.layers[1].units`)."""
    paths = list(paths)
    short = {p: re.split(r"[.\[]", p)[-1].rstrip("]") for p in paths}
    counts = Counter(short.values())
    return {p: short[p] if counts[short[p]] == 1 else p for p in paths}


def best_line(study: Study) -> Text:
    """`best: trial #3 val_accuracy 0.9722 at epoch 9 (job_...)  lr=0.01 units=64`."""
    best = study.best_trial
    metric = study.objective.get("metric", "objective")
    if best is None:
        return Text(f"best: no trial has reported {metric} yet", style="bright_black")
    names = param_names(best.params)
    params = "  ".join(f"{names[k]}={value_text(v)}" for k, v in best.params.items())
    epoch = f" at epoch {best.epoch}" if best.epoch is not None else ""
    return Text.assemble(("best: ", "bold"), f"trial #{best.number} {metric} ",
                         (value_text(best.value), "bold green"),
                         f"{epoch} ({best.job_id or '-'})  {params}")


def study_summary(study: Study) -> Text:
    """`study_... (name) running: 4 trials (2 running, 1 completed, 1 pruned), 12 epochs`."""
    line = Text(f"{study.id} ({study.name}) ")
    line.append_text(status_text(study.state))
    counts = {k: n for k, n in study.trials.items() if k != "total" and n}
    parts = ", ".join(f"{n} {k}" for k, n in counts.items())
    line.append(f": {study.trials.get('total', 0)} trials"
                + (f" ({parts})" if parts else "") + f", {study.epochs_trained} epochs trained")
    if study.end_reason:
        line.append(f"; {study.end_reason}")
    return line


def trials_table(study: Study, trials: Sequence[Trial]) -> Table:
    """One row per trial: number, each searched param, state, objective, epochs, pruned."""
    names = param_names(study.space)
    metric = study.objective.get("metric", "objective")
    best = study.best_trial.number if study.best_trial else None
    # Everything but the job id stays on one line; on a narrow terminal the id folds.
    table = Table(Column("#", justify="right", no_wrap=True),
                  *(Column(n, no_wrap=True) for n in names.values()),
                  Column("STATE", no_wrap=True), Column(metric.upper(), justify="right",
                                                        no_wrap=True),
                  Column("EPOCHS", justify="right", no_wrap=True), Column("PRUNED", no_wrap=True),
                  Column("JOB", overflow="fold", min_width=8), box=None, pad_edge=False,
                  header_style="bold")
    for t in trials:
        table.add_row(str(t.number), *(value_text(t.params.get(p)) for p in names),
                      Text(t.state, style=TRIAL_STYLES.get(t.state, "")),
                      Text(value_text(t.value), style="bold green" if t.number == best else ""),
                      str(t.epochs_trained), "yes" if t.pruned else "", t.job_id or "-")
    return table


def study_view(study: Study, trials: Sequence[Trial]) -> Group:
    """What `trainery study create --follow` redraws: summary, trials, best so far."""
    return Group(study_summary(study), trials_table(study, trials), best_line(study))
