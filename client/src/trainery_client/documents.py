"""Job specs and study requests from files: YAML, or JSON.

PyYAML (a dependency of the distribution, for the CLI) is imported only when a YAML file
is read: the SDK itself imports with httpx and pydantic alone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def load_document(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The mapping a YAML or JSON file holds; ValueError (with the file's name) if it holds none."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a mapping at the top level")
    return data
