"""The study commands: `trainery study create|status|trials|follow|list|cancel`."""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Column, Table

from trainery_client import Client
from trainery_client.cli.app import JsonOutput, connect, outcome_code, print_json, study_app
from trainery_client.cli.jobs import load_spec
from trainery_client.cli.render import (
    best_line,
    short_time,
    status_text,
    study_summary,
    study_view,
    trials_table,
    value_text,
    when,
)

StudyId = Annotated[str, typer.Argument(help="The study's id (study_...).")]
StudyWait = Annotated[float | None, typer.Option(
    min=0, help="Give up (exit 3) if the study has not ended after this many seconds.")]
PollSeconds = Annotated[float, typer.Option(min=0.1, help="Seconds between looks at the study.")]


def follow_study_live(client: Client, study_id: str, as_json: bool, max_wait: float | None,
                      poll_s: float) -> int:
    """Show the study's trials live until it ends; its exit code."""
    snapshots = client.follow_study(study_id, timeout=max_wait, poll_s=poll_s)
    if as_json:
        for snapshot in snapshots:
            print_json(snapshot.to_json(), compact=True)
        return outcome_code(client.study(study_id).state)
    with Live(console=Console(), auto_refresh=False) as live:
        for snapshot in snapshots:
            live.update(study_view(snapshot.study, snapshot.trials), refresh=True)
            study = snapshot.study
    return outcome_code(study.state)


@study_app.command("create")
def study_create(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False,
                                         help="The study request, YAML or JSON.")],
    follow: Annotated[bool, typer.Option(
        "--follow", "-f", help="Show the trials live until the study ends.")] = False,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a field: dotted.path=value (YAML value); repeatable.")] = None,
    max_wait: StudyWait = None,
    poll: PollSeconds = 2.0,
    json_output: JsonOutput = False,
) -> None:
    """Start a study (docs/studies.md); with --follow, exit 0/1/2 as it succeeds, fails or is
    cancelled."""
    request = load_spec(file, set_ or ())
    code = 0
    with connect(ctx) as client:
        study = client.create_study(request)
        if json_output:
            print_json(study.to_json(), compact=follow)
        else:
            Console().print(study_summary(study))
        if follow:
            code = follow_study_live(client, study.id, json_output, max_wait, poll)
    if code:
        raise typer.Exit(code)


@study_app.command("follow")
def study_follow(ctx: typer.Context, study_id: StudyId, max_wait: StudyWait = None,
                 poll: PollSeconds = 2.0, json_output: JsonOutput = False) -> None:
    """Show a study's trials live until it ends (--json: one snapshot per line)."""
    with connect(ctx) as client:
        code = follow_study_live(client, study_id, json_output, max_wait, poll)
    if code:
        raise typer.Exit(code)


@study_app.command("status")
def study_status(ctx: typer.Context, study_id: StudyId, json_output: JsonOutput = False) -> None:
    """Show a study: state and why it ended, trial counts, epochs trained, the best trial."""
    with connect(ctx) as client:
        study = client.study(study_id)
    if json_output:
        print_json(study.to_json())
        return
    console = Console()
    console.print(study_summary(study))
    searcher = study.searcher
    console.print(f"searcher {searcher.get('name')}, max_trials {searcher.get('max_trials')}, "
                  f"max_concurrent_trials {searcher.get('max_concurrent_trials')}; objective "
                  f"{study.objective.get('mode')} {study.objective.get('metric')}"
                  + (f"; rungs {study.rungs}" if study.rungs else ""))
    console.print(f"created {when(study.created_at)}, finished {when(study.finished_at)}")
    console.print(best_line(study))


@study_app.command("trials")
def study_trials(ctx: typer.Context, study_id: StudyId, json_output: JsonOutput = False) -> None:
    """List a study's trials: params, state, objective, epochs, pruned, job id."""
    with connect(ctx) as client:
        study = client.study(study_id)
        trials = client.study_trials(study_id)
    if json_output:
        print_json([t.to_json() for t in trials])
    else:
        Console().print(trials_table(study, trials))


@study_app.command("list")
def study_list(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option(help="Only studies in this state.")] = None,
    limit: Annotated[int, typer.Option(min=0, help="Show at most this many; 0 = all.")] = 20,
    json_output: JsonOutput = False,
) -> None:
    """List studies, newest first."""
    with connect(ctx) as client:
        found = client.studies(state, page_size=min(limit or 200, 200))
        shown = list(islice(found, limit) if limit else found)
    if json_output:
        print_json([s.to_json() for s in shown])
        return
    table = Table(Column("ID", no_wrap=True), "NAME", Column("STATE", no_wrap=True),
                  Column("TRIALS", justify="right"), Column("BEST", justify="right"),
                  Column("CREATED", no_wrap=True), box=None, pad_edge=False,
                  header_style="bold")
    for s in shown:
        best = value_text(s.best_trial.value) if s.best_trial else "-"
        table.add_row(s.id, s.name, status_text(s.state), str(s.trials.get("total", 0)), best,
                      short_time(s.created_at))
    Console().print(table)


@study_app.command("cancel")
def study_cancel(ctx: typer.Context, study_id: StudyId, json_output: JsonOutput = False) -> None:
    """Cancel a study: its queued trials end at once, running ones within seconds."""
    with connect(ctx) as client:
        study = client.cancel_study(study_id)
    if json_output:
        print_json(study.to_json())
    else:
        Console().print(study_summary(study))
