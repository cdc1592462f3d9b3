"""The `trainery` command line (see app.py); importing it registers the client's commands."""

from trainery_client.cli import datasets, jobs, studies, tensorboard
from trainery_client.cli.app import app, load_commands, main

__all__ = ["app", "datasets", "jobs", "load_commands", "main", "studies", "tensorboard"]
