"""The submit form: the spec editor's text plus the common fields, as one spec dict."""

from __future__ import annotations

import json
from typing import Any

import yaml

from app.core.errors import InvalidInput, problem

# The most text the spec editor may send; a spec is a few KiB.
MAX_SPEC_CHARS = 256 * 1024

# Common fields shown above the editor: form name -> the spec path they set.
COMMON_FIELDS: dict[str, tuple[str, ...]] = {
    "name": ("name",),
    "framework": ("framework",),
    "epochs": ("training", "epochs"),
    "batch_size": ("training", "batch_size"),
    "lr": ("training", "optimizer", "lr"),
}
NUMERIC = {"epochs": int, "batch_size": int, "lr": float}
FIELD_FOR_PATH = {".".join(path): name for name, path in COMMON_FIELDS.items()}

DEFAULT_SPEC: dict[str, Any] = {
    "name": "iris-mlp",
    "framework": "pytorch",
    "task": "classification",
    "dataset": {"builtin": "iris", "validation_split": 0.2},
    "model": {"preset": "mlp"},
    "training": {"epochs": 10, "batch_size": 16, "optimizer": {"name": "adam", "lr": 0.001}},
}


def spec_text(spec: dict[str, Any]) -> str:
    """A spec as the editor shows it (YAML, keys in spec order)."""
    return str(yaml.safe_dump(spec, sort_keys=False, default_flow_style=False))


def common_values(spec: dict[str, Any]) -> dict[str, str]:
    """The common fields' values as found in spec, for pre-filling the form."""
    out = {}
    for name, path in COMMON_FIELDS.items():
        node: Any = spec
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        out[name] = "" if node is None or isinstance(node, (dict, list)) else str(node)
    return out


def build_spec(text: str, fields: dict[str, str]) -> dict[str, Any]:
    """Parse the editor (YAML or JSON) and lay the filled common fields over it.

    Raises InvalidInput with field paths for unparsable text or fields.
    """
    if len(text) > MAX_SPEC_CHARS:
        raise InvalidInput([problem(("spec",), f"the spec has {len(text)} characters; "
                                    f"at most {MAX_SPEC_CHARS}")])
    try:
        spec = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise InvalidInput([problem(("spec",), f"not valid YAML or JSON: {exc}")]) from exc
    if not isinstance(spec, dict):
        raise InvalidInput([problem(("spec",), "the spec must be a mapping (an object)")])
    problems = []
    for name, path in COMMON_FIELDS.items():
        raw = (fields.get(name) or "").strip()
        if not raw:
            continue
        value: Any = raw
        if name in NUMERIC:
            try:
                value = NUMERIC[name](raw)
            except ValueError:
                problems.append(problem(path, f"{raw!r} is not a number"))
                continue
        node = spec
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = value
    if problems:
        raise InvalidInput(problems)
    return spec


def split_problems(
        problems: list[dict[str, Any]]) -> tuple[dict[str, list[str]], list[dict[str, Any]]]:
    """Problems beside the common field they are about, and the rest (shown by the editor)."""
    by_field: dict[str, list[str]] = {}
    rest = []
    for p in problems:
        field = FIELD_FOR_PATH.get(".".join(str(x) for x in p.get("loc", [])))
        if field is None:
            rest.append(p)
        else:
            by_field.setdefault(field, []).append(str(p["message"]))
    return by_field, rest


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=False, default=str)
