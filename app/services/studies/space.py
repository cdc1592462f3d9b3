"""Spec paths (`model.layers[0].units`) and the search space over them; no SQL, no sampler."""

from __future__ import annotations

import copy
import math
import re
from typing import Any

from app.schemas.studies import ChoiceDist, Distribution, IntDist, LogUniformDist, UniformDist

_PATH = re.compile(r"^[A-Za-z_]\w*(\[\d+\])*(\.[A-Za-z_]\w*(\[\d+\])*)*$")
_PART = re.compile(r"([A-Za-z_]\w*)|\[(\d+)\]")


class PathError(ValueError):
    """A spec path that is malformed or names nothing in the spec."""


def parse_path(path: str) -> list[str | int]:
    """'model.layers[0].units' -> ['model', 'layers', 0, 'units']."""
    if not _PATH.match(path):
        raise PathError("not a spec path; write it like training.optimizer.lr or "
                        "model.layers[0].units")
    return [int(idx) if idx else name for name, idx in _PART.findall(path)]


def _parent(spec: dict[str, Any], parts: list[str | int]) -> Any:
    node: Any = spec
    for depth, part in enumerate(parts[:-1]):
        node = _step(node, part, parts[:depth + 1])
    return node


def _step(node: Any, part: str | int, so_far: list[str | int]) -> Any:
    where = _show(so_far)
    if isinstance(part, int):
        if not isinstance(node, list) or part >= len(node):
            raise PathError(f"{where} is not in the base spec")
        return node[part]
    if not isinstance(node, dict) or part not in node:
        raise PathError(f"{where} is not in the base spec")
    if node[part] is None:
        raise PathError(f"{where} is not set in the base spec; set it there first")
    return node[part]


def _show(parts: list[str | int]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")


def get_value(spec: dict[str, Any], path: str) -> Any:
    """The value at path (PathError if the path names nothing)."""
    parts = parse_path(path)
    parent = _parent(spec, parts)
    last = parts[-1]
    if isinstance(last, int):
        if not isinstance(parent, list) or last >= len(parent):
            raise PathError(f"{path} is not in the base spec")
        return parent[last]
    if not isinstance(parent, dict) or last not in parent:
        raise PathError(f"{path} is not a field of the spec")
    return parent[last]


def apply(spec: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A copy of spec with each path set to its value."""
    out = copy.deepcopy(spec)
    for path, value in params.items():
        parts = parse_path(path)
        get_value(out, path)  # raises if the path names nothing
        parent = _parent(out, parts)
        parent[parts[-1]] = copy.deepcopy(value)
    return out


def bounds(dist: Distribution) -> list[tuple[str | int, Any]]:
    """The extreme values a distribution can take, each with where it sits in the request."""
    if isinstance(dist, ChoiceDist):
        return [(i, v) for i, v in enumerate(dist.values)]
    return [("low", dist.low), ("high", dist.high)]


def grid_values(dist: Distribution) -> list[Any] | None:
    """Every value a grid visits, or None for a continuous range (no step)."""
    if isinstance(dist, ChoiceDist):
        return list(dist.values)
    if isinstance(dist, IntDist):
        return list(range(dist.low, dist.high + 1, dist.step))
    if isinstance(dist, UniformDist) and dist.step is not None:
        count = math.floor((dist.high - dist.low) / dist.step + 1e-9) + 1
        return [round(dist.low + i * dist.step, 12) for i in range(count)]
    return None


def is_continuous(dist: Distribution) -> bool:
    """True for a float range (uniform, loguniform), which only fits a float field."""
    return isinstance(dist, (UniformDist, LogUniformDist))
