"""Both runners' ONNX step: store the export, or record (event, model card) why there is none."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from workers.reporting import JobReporter

ONNX_INPUT = "inputs"


def output_name(task: str) -> str:
    """The ONNX graph's output: class logits or regression predictions."""
    return "logits" if task == "classification" else "predictions"


def save_onnx(reporter: JobReporter, export: Callable[[], bytes], input_dtype: str,
              task: str, fail: bool = False) -> dict[str, Any]:
    """Run export and store its bytes as the "onnx" artifact; what the model card adds about it.

    A model that trained is a success even if no converter can express it: the
    job still succeeds, and the reason is kept for the event stream and the download.
    `fail` (tests: the `onnx_fail` fault rule) makes the export fail without running it.
    """
    try:
        if fail:
            raise RuntimeError("injected fault: onnx_fail (TRAINERY_FAULT_INJECTION)")
        payload = export()
    except Exception as exc:  # noqa: BLE001 - an export failure never fails the job
        reason = (f"{type(exc).__name__}: {exc}".strip().splitlines() or ["unknown error"])[0]
        reason = reason[:500]
        reporter.event(f"onnx export unavailable: {reason}", {"format": "onnx", "error": reason})
        return {"unavailable_formats": {"onnx": reason}}
    reporter.save_artifact("onnx", payload, "model.onnx", "application/octet-stream")
    return {"onnx": {"input": {"name": ONNX_INPUT, "dtype": input_dtype},
                     "output": {"name": output_name(task)}}}


def check_onnx(payload: bytes, example: np.ndarray, expected: np.ndarray,
               tolerance: float = 1e-4) -> None:
    """The ONNX graph must reproduce the model on example (skipped without onnxruntime)."""
    try:
        import onnxruntime
    except ImportError:
        return
    session = onnxruntime.InferenceSession(payload, providers=["CPUExecutionProvider"])
    got = session.run(None, {ONNX_INPUT: example})[0]
    if not np.allclose(got, expected, rtol=tolerance, atol=tolerance):
        worst = float(np.max(np.abs(got - expected)))
        raise RuntimeError(f"the ONNX graph does not reproduce the model (largest difference "
                           f"{worst:.2e})")
