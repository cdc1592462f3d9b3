"""Test-only fault injection for runners (TRAINERY_FAULT_INJECTION), so chaos tests hit
real code paths.

The runner entry reads the setting once and, when it names rules for the job, adds a
`FaultInjection` callback; production callbacks know nothing of it.

Comma-separated rules, each `kind@epoch[:arg][/job-name]`, firing when that epoch ends
(epoch 0 fires at the first batch of every run), for every job or only the named one:
`segfault@2` crashes the runner with SIGSEGV, `kill_worker@1` SIGKILLs the worker
process that supervises it, `raise@1` raises an exception, `slow@0:0.2` sleeps 0.2 s
after every batch from that epoch on, `onnx_fail@0` makes the ONNX export fail.
An unknown kind or a malformed rule is an error (`ValueError`), never silently ignored.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from dataclasses import dataclass

from workers.callbacks import Callback, Logs, Trainer
from workers.reporting import JobReporter

KINDS = frozenset({"segfault", "kill_worker", "raise", "slow", "onnx_fail"})


@dataclass(frozen=True)
class Rule:
    kind: str
    epoch: int
    arg: float
    job_name: str


def parse(text: str, job_name: str) -> list[Rule]:
    """'segfault@2/crashme,slow@0:0.1' -> the rules that apply to a job called job_name.

    Every rule is checked, including those for other jobs: a typo fails the first job
    instead of making a chaos test pass without its fault.
    """
    rules = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        body, _, name = part.partition("/")
        kind, _, rest = body.partition("@")
        epoch, _, arg = rest.partition(":")
        if kind not in KINDS:
            raise ValueError(f"fault rule {part!r}: unknown kind {kind!r}; known: {sorted(KINDS)}")
        try:
            rule = Rule(kind, int(epoch or 0), float(arg or 0), name)
        except ValueError:
            raise ValueError(f"fault rule {part!r}: want kind@epoch[:arg][/job-name]") from None
        if not name or name == job_name:
            rules.append(rule)
    return rules


class FaultInjection(Callback):
    """Fires the rules at their epochs (see the module docstring)."""

    name = "faults"

    def __init__(self, rules: list[Rule], reporter: JobReporter | None = None) -> None:
        self.rules = [r for r in rules if r.kind != "onnx_fail"]  # not a training fault
        self.onnx_fails = any(r.kind == "onnx_fail" for r in rules)
        self.reporter = reporter
        self.epoch = 0
        self.started = False

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None:
        self.epoch = epoch - 1  # epochs completed so far

    def on_batch_end(self, trainer: Trainer, batch: int) -> None:
        for rule in self.rules:
            if rule.kind == "slow" and self.epoch >= rule.epoch:
                time.sleep(rule.arg)
            elif rule.epoch == 0 and not self.started:
                self._fire(rule)
        self.started = True

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: Logs) -> None:
        for rule in self.rules:
            if rule.epoch == epoch and rule.kind != "slow":
                if self.reporter is not None:
                    # Strike once the epoch's writes have landed, so a test knows
                    # which checkpoint the next attempt finds.
                    self.reporter.flush()
                self._fire(rule)

    @staticmethod
    def _fire(rule: Rule) -> None:
        if rule.kind == "segfault":
            ctypes.string_at(0)
        elif rule.kind == "kill_worker":
            os.kill(os.getppid(), signal.SIGKILL)
            time.sleep(60)  # the kernel ends us with our parent (PDEATHSIG)
        elif rule.kind == "raise":
            raise RuntimeError("injected fault")
