"""What each process may load: workers never FastAPI/Starlette, the API never a framework."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.harness import ROOT

WALK_WORKERS = """
import importlib, json, pkgutil, sys
import workers
failed = {}
for m in pkgutil.walk_packages(workers.__path__, "workers."):
    try:
        importlib.import_module(m.name)
    except Exception as exc:
        failed[m.name] = repr(exc)
print(json.dumps({"failed": failed, "modules": sorted(sys.modules)}))
"""


def _fresh(code: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _top_level(modules: object) -> set[str]:
    assert isinstance(modules, list)
    return {m.split(".")[0] for m in modules}


def test_no_worker_module_loads_fastapi_or_starlette() -> None:
    # Every module, the PyTorch and Keras runners included (both frameworks are installed).
    seen = _fresh(WALK_WORKERS)
    assert seen["failed"] == {}
    loaded = _top_level(seen["modules"])
    assert "torch" in loaded and "keras" in loaded  # the walk really reached the runners
    assert not loaded & {"fastapi", "starlette"}


def test_the_api_loads_no_framework() -> None:
    seen = _fresh("import json, sys, app.main\nprint(json.dumps({'modules': sorted(sys.modules)}))")
    assert not _top_level(seen["modules"]) & {"torch", "tensorflow", "keras", "jax"}


def test_tasks_do_not_import_the_celery_app() -> None:
    # workers.celery_app imports workers.tasks for its hooks; never the reverse (no cycle).
    seen = _fresh("import json, sys, workers.tasks\n"
                  "print(json.dumps({'modules': sorted(sys.modules)}))")
    modules = seen["modules"]
    assert isinstance(modules, list) and "workers.celery_app" not in modules
