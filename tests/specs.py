"""Job specs that tests submit (factories: a fresh dict each call)."""

from __future__ import annotations

import copy
from typing import Any

DESIGN_SPEC: dict[str, Any] = {
    "name": "digits-mlp",
    "framework": "pytorch",
    "task": "classification",
    "dataset": {"builtin": "digits", "validation_split": 0.2},
    "model": {"layers": [
        {"type": "dense", "units": 128, "activation": "relu"},
        {"type": "dropout", "rate": 0.1},
        {"type": "dense", "units": 64, "activation": "relu"},
    ]},
    "training": {
        "epochs": 20, "batch_size": 64,
        "optimizer": {"name": "adam", "lr": 0.001},
        "lr_schedule": {"name": "cosine"},
        "early_stopping": {"monitor": "val_loss", "patience": 5},
        "precision": "fp32",
        "seed": 0,
    },
    "checkpoint": {"every_epochs": 1, "keep_last": 2},
    "resources": {"gpus": 1, "max_runtime_s": 3600},
    "priority": 0,
}


def design_spec(**overrides: Any) -> dict[str, Any]:
    """The DESIGN.md section 3 spec, with top-level fields replaced."""
    spec = copy.deepcopy(DESIGN_SPEC)
    spec.update(overrides)
    return spec


def tiny_spec(framework: str = "pytorch", epochs: int = 2, **overrides: Any) -> dict[str, Any]:
    """A few-second job on iris."""
    spec: dict[str, Any] = {
        "name": "tiny", "framework": framework,
        "dataset": {"builtin": "iris"},
        "model": {"preset": "mlp"},
        "training": {"epochs": epochs, "batch_size": 16},
    }
    spec.update(overrides)
    return spec
