"""`python -m workers.devicecheck`: can this worker's pinned device run a kernel? Prints JSON.

Runs in its own process so the worker itself never initialises a framework or CUDA. A
worker pinned to no GPU runs `cpu_check` in its own process instead: nothing there to
initialise, only a framework to find.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from typing import Any

FRAMEWORK_MODULES = ("torch", "tensorflow")


def gpu_pinned() -> bool:
    """Whether CUDA_VISIBLE_DEVICES names a GPU for this worker."""
    return os.environ.get("CUDA_VISIBLE_DEVICES", "") not in ("", "-1")


def cpu_check() -> dict[str, Any]:
    """No GPU pinned: the CPU runs whatever an installed framework runs, so the check is
    that one is installed, found without importing it (an import is seconds of CPU at
    every worker start, and the job's runner imports it anyway)."""
    found = [name for name in FRAMEWORK_MODULES if importlib.util.find_spec(name) is not None]
    if not found:
        return {"ok": False, "device": "cpu", "gpu_name": None,
                "detail": "neither torch nor tensorflow is installed for this worker's Python"}
    return {"ok": True, "device": "cpu", "gpu_name": None,
            "detail": f"ok (no GPU pinned; {' and '.join(found)} installed)"}


def check() -> dict[str, Any]:
    """Run a small kernel on the pinned GPU (or the CPU when none is pinned)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    want_gpu = visible not in ("", "-1")
    try:
        import torch
    except ImportError:
        return _check_tensorflow(want_gpu, visible)
    if want_gpu:
        if not torch.cuda.is_available():
            return {"ok": False, "device": f"cuda:{visible}", "gpu_name": None,
                    "detail": f"CUDA_VISIBLE_DEVICES={visible} but torch sees no CUDA device"}
        x = torch.ones(256, 256, device="cuda")
        value = float((x @ x).sum().item())
        name = torch.cuda.get_device_name(0)
        ok = value == 256.0**3
        return {"ok": ok, "device": f"cuda:{visible}", "gpu_name": name,
                "detail": "ok" if ok else f"matmul gave {value}"}
    value = float((torch.ones(64, 64) @ torch.ones(64, 64)).sum().item())
    return {"ok": value == 64.0**3, "device": "cpu", "gpu_name": None, "detail": "ok"}


def _check_tensorflow(want_gpu: bool, visible: str) -> dict[str, Any]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if want_gpu and not gpus:
        return {"ok": False, "device": f"cuda:{visible}", "gpu_name": None,
                "detail": f"CUDA_VISIBLE_DEVICES={visible} but TensorFlow sees no GPU"}
    value = float(tf.reduce_sum(tf.ones((64, 64)) @ tf.ones((64, 64))))
    device = f"cuda:{visible}" if want_gpu else "cpu"
    return {"ok": value == 64.0**3, "device": device, "gpu_name": None, "detail": "ok"}


if __name__ == "__main__":
    try:
        result = check()
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        result = {"ok": False, "device": "?", "gpu_name": None,
                  "detail": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result))
    sys.exit(0 if result["ok"] else 1)
