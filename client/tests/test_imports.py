"""The client distribution's footprint: what importing the SDK and the CLI pulls in."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
SDK_DEPENDENCIES = ["httpx", "httpcore", "h11", "anyio", "sniffio", "idna", "certifi",
                    "pydantic", "pydantic_core", "typing_extensions", "typing_inspection",
                    "annotated_types"]
SERVER_MODULES = ["fastapi", "starlette", "sqlalchemy", "celery", "numpy", "torch",
                  "tensorflow", "app", "workers"]


def _python(code: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=60, cwd=cwd)


def test_the_sdk_and_the_cli_import_none_of_the_server(tmp_path: Path) -> None:
    code = f"""
        import json, sys
        sys.path.insert(0, {str(SRC)!r})
        import trainery_client, trainery_client.cli
        from trainery_client.cli import app, main
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {SERVER_MODULES!r})))
    """
    out = _python(code, tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


def test_the_sdk_imports_with_only_httpx_and_pydantic(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    for name in SDK_DEPENDENCIES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            continue  # optional for this httpx (sniffio is gone from recent ones)
        origin = Path(spec.origin)
        source = origin.parent if origin.name == "__init__.py" else origin
        (site / source.name).symlink_to(source)
    others = [*SERVER_MODULES, "typer", "rich", "yaml", "keras", "alembic"]
    code = f"""
        import importlib.util, sys
        sys.path[:0] = [{str(SRC)!r}, {str(site)!r}]
        import trainery_client
        from trainery_client import AsyncClient, Client
        findable = [m for m in {others!r} if importlib.util.find_spec(m) is not None]
        assert not findable, findable
        Client("http://127.0.0.1:1").close()
        print("ok")
    """
    out = _python(code, tmp_path, "-I", "-S")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
