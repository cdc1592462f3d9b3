"""Commands other distributions add to `trainery` through the `trainery.commands` group."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _plugin_dir(tmp_path: Path, name: str, target: str, module: str = "") -> Path:
    """A folder holding an installed distribution whose entry point is `target`."""
    site = tmp_path / name
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[trainery.commands]\n{name} = {target}\n")
    if module:
        (site / f"{name}.py").write_text(textwrap.dedent(module))
    return site


def _trainery(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(SRC)]),
           "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "trainery_client.cli", *args],
                          capture_output=True, text=True, timeout=60, env=env, cwd=site)


def test_a_plugin_adds_its_commands(tmp_path: Path) -> None:
    site = _plugin_dir(tmp_path, "hello_plugin", "hello_plugin:register", """
        import typer

        def register(cli: typer.Typer) -> None:
            @cli.command()
            def hello() -> None:
                print("hello from a plugin")
    """)
    out = _trainery(site, "hello")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "hello from a plugin"


def test_a_broken_plugin_leaves_the_client_commands_working(tmp_path: Path) -> None:
    site = _plugin_dir(tmp_path, "broken_plugin", "no_such_module:register")
    out = _trainery(site, "submit", "--help")
    assert out.returncode == 0, out.stderr
    assert "no_such_module:register" in out.stderr and "--follow" in out.stdout
