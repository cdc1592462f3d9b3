"""What both frameworks' runners share: the model card, the stop flag, the epoch logs."""

from __future__ import annotations

import platform
import signal
import threading
from typing import Any

from app.core.spec import JobSpec
from workers.datasets import Dataset


class StopRequested(Exception):
    """The stop flag was seen at a batch boundary."""


class StopFlag:
    """Set from a signal handler; the trainer reads it at each batch boundary."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def set(self, reason: str) -> None:
        self.reason = reason
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def install(self) -> None:
        """SIGTERM and SIGINT ask the trainer to stop at the next batch."""
        def handler(signum: int, _frame: Any) -> None:
            self.set(signal.Signals(signum).name)
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)


def model_card(spec: JobSpec, dataset: Dataset, versions: dict[str, str],
               input_note: str) -> dict[str, Any]:
    """What the downloaded model takes and returns (DESIGN.md section 6)."""
    dtypes = ["float32"]
    if dataset.input_dtype == "uint8":
        dtypes.append("uint8")
    return {
        "framework": spec.framework,
        "versions": {"python": platform.python_version(), **versions},
        "task": spec.task,
        "input": {"shape": [None, *dataset.sample_shape], "dtypes": dtypes,
                  "layout": "NHWC" if len(dataset.sample_shape) == 3 else "features",
                  "note": input_note},
        "output": {"shape": [None, dataset.num_outputs],
                   "kind": "logits" if spec.task == "classification" else "predictions"},
        "class_names": dataset.class_names,
        "dataset": dataset.name,
        "n_train": int(len(dataset.x_train)),
        "n_val": int(len(dataset.x_val)),
    }


def resume_from_latest(trainer: Any, reporter: Any) -> None:
    """Load the job's newest intact checkpoint into trainer, if any, and say so in the events."""
    checkpoint = reporter.latest_checkpoint()
    if checkpoint is None:
        return
    done = trainer.load_checkpoint(checkpoint.payload)
    within = (f", {trainer.resume_batch} batches into epoch {done + 1}"
              if trainer.resume_batch else "")
    reporter.event(f"resumed from the checkpoint of epoch {done}{within}",
                   {"epoch": done, "batch": trainer.resume_batch})
