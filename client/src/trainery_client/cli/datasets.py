"""The dataset commands: `trainery datasets list|show|upload|delete`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Column, Table

from trainery_client.cli.app import JsonOutput, connect, datasets_app, print_json


@datasets_app.command("list")
def datasets_list(ctx: typer.Context, json_output: JsonOutput = False) -> None:
    """List the datasets a job can train on."""
    with connect(ctx) as client:
        found = client.datasets()
    if json_output:
        print_json([d.to_json() for d in found])
        return
    table = Table(Column("ID", no_wrap=True), "TASK", Column("SAMPLES", justify="right"),
                  Column("SHAPE", no_wrap=True), Column("CLASSES", justify="right"),
                  "DESCRIPTION", box=None, pad_edge=False, header_style="bold")
    for d in found:
        shape = "x".join(map(str, d.sample_shape)) if d.sample_shape else "-"
        table.add_row(d.id, d.task, str(d.n_samples or "-"), shape,
                      str(d.num_classes or "-"), d.description or d.name)
    Console().print(table)


@datasets_app.command("show")
def datasets_show(ctx: typer.Context, dataset_id: Annotated[str, typer.Argument()],
                  json_output: JsonOutput = False) -> None:
    """Show one dataset: shape, classes, size."""
    with connect(ctx) as client:
        dataset = client.dataset(dataset_id)
    if json_output:
        print_json(dataset.to_json())
        return
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for key, value in dataset.to_json().items():
        if value is not None and value != "":
            table.add_row(key, value if isinstance(value, str) else json.dumps(value))
    Console().print(table)


@datasets_app.command("upload")
def datasets_upload(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False,
                                         help="An .npz, .csv or .zip of images.")],
    name: Annotated[str | None, typer.Option(help="Default: the file's name.")] = None,
    task: Annotated[str | None, typer.Option(help="classification or regression.")] = None,
    target: Annotated[str | None, typer.Option(help="CSV: the label column.")] = None,
    image_size: Annotated[str | None, typer.Option(help="Image zip: HEIGHTxWIDTH.")] = None,
    format: Annotated[str | None, typer.Option(
        help="npz, csv or zip; default: from the file name.")] = None,
    description: Annotated[str | None, typer.Option()] = None,
    field: Annotated[list[str] | None, typer.Option(
        help="Any other form field, KEY=VALUE; repeatable.")] = None,
    json_output: JsonOutput = False,
) -> None:
    """Upload a dataset file; train on it with {"dataset": {"id": ...}} (docs/datasets.md)."""
    extra = dict(item.partition("=")[::2] for item in field or ())
    options = {k: v for k, v in (("target", target), ("image_size", image_size),
                                 ("format", format)) if v is not None}
    with connect(ctx) as client:
        dataset = client.upload_dataset(path, name=name, task=task, description=description,
                                        **options, **extra)
    if json_output:
        print_json(dataset.to_json())
    else:
        Console().print(f"{dataset.id}: {dataset.name}, {dataset.task}, "
                        f"{dataset.n_samples} samples of shape {dataset.sample_shape}")


@datasets_app.command("delete")
def datasets_delete(ctx: typer.Context, dataset_id: Annotated[str, typer.Argument()]) -> None:
    """Delete an uploaded dataset and its stored data."""
    with connect(ctx) as client:
        client.delete_dataset(dataset_id)
    Console().print(f"deleted {dataset_id}")
