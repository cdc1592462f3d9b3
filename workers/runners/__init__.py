"""The framework registry: the module that trains each spec framework, imported lazily.

A runner process imports exactly one framework: the one its job names. `preload`
imports it without running anything (a pre-started runner can pay for the import
before a job arrives).
"""

from __future__ import annotations

import importlib
from typing import Any, NamedTuple, Protocol

import numpy as np

from app.core.modelspec import ResolvedLayer
from app.core.spec import JobSpec
from workers.datasets import Dataset
from workers.reporting import JobReporter
from workers.training.replicas import Replicas

# The spec's `framework` -> the module that implements `Framework` for it.
FRAMEWORKS = {
    "pytorch": "workers.runners.pytorch.framework",
    "keras": "workers.runners.tfkeras.framework",
}


class ModelArgs(NamedTuple):
    """Both frameworks' build_model arguments: the layers, shapes and normalisation."""

    layers: list[ResolvedLayer]
    input_shape: tuple[int, ...]
    num_outputs: int
    mean: np.ndarray
    std: np.ndarray
    y_mean: np.ndarray | None
    y_std: np.ndarray | None


class Framework(Protocol):
    """What one framework's module supplies to the shared job run (workers.training.run)."""

    INPUT_NOTE: str  # how to call the downloaded model, for the model card

    def versions(self) -> dict[str, str]: ...

    def setup(self, spec: JobSpec, device: str, replicas: Replicas) -> Any:
        """Use the device the worker verified (and, for a data-parallel job, join its
        process group or spread over its devices) and seed the framework; a handle."""
        ...

    def warm_up(self) -> None:
        """In a spare, before its job: what a first step would otherwise do lazily, and
        job-independent, leaving nothing a job could see (no device taken, no seed)."""
        ...

    def make_backend(self, spec: JobSpec, data: Dataset, model_args: ModelArgs,
                     device: Any) -> Any:
        """Build the model from build_model's model_args and the loop's backend for it."""
        ...

    def export(self, spec: JobSpec, data: Dataset, backend: Any, model_args: ModelArgs,
               reporter: JobReporter, onnx_fault: bool) -> dict[str, Any]:
        """Store the trained model's downloads; what the model card adds about them."""
        ...

    def out_of_memory(self, exc: BaseException) -> bool:
        """Whether exc is the framework saying an allocation failed (host or device)."""
        ...


def preload(framework: str) -> Framework:
    """Import the module for framework (and so the framework itself); run nothing."""
    try:
        name = FRAMEWORKS[framework]
    except KeyError:
        raise ValueError(f"unknown framework {framework!r}; known: {sorted(FRAMEWORKS)}") from None
    return importlib.import_module(name)
