"""What the benchmarks measure: each epoch's wall time and loss in one loop, and the report."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from workers.callbacks import Callback, Logs, Trainer
from workers.reporting import JobReporter

# One epoch of a loop: (wall seconds, mean training loss).
EpochRecord = tuple[float, float]


class EpochClock(Callback):
    """Times each epoch from its start to the end of its on_epoch_end hooks.

    Put last in the callback list: an epoch's time then includes the callbacks that
    ran at its end (metrics to SQL, the checkpoint), as a job's wall time does.
    """

    name = "epoch_clock"

    def __init__(self) -> None:
        self.started = 0.0
        self.epochs: list[EpochRecord] = []

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: Logs) -> None:
        self.epochs.append((time.perf_counter() - self.started, logs["loss"]))


class Interleave(Callback):
    """Runs the next epoch of a reference loop between the trainer's epochs.

    Each of the trainer's epochs then has one of the reference's right beside it,
    so load from other processes on a shared machine falls on both alike. With
    `before`, it goes ahead of the EpochClock in the list (the reference epoch runs
    at on_epoch_begin, before the clock starts); otherwise after it (at on_epoch_end,
    once the clock has stopped).
    """

    name = "interleave"

    def __init__(self, reference: Iterator[EpochRecord], before: bool) -> None:
        self.reference, self.before = reference, before
        self.epochs: list[EpochRecord] = []

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None:
        if self.before:
            self.epochs.append(next(self.reference))

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: Logs) -> None:
        if not self.before:
            self.epochs.append(next(self.reference))


class HoldWrites:
    """Keeps the reporter's write-behind off a reference loop's epochs, as a fair interleave needs.

    `hold` goes first in the trainer's callbacks: at each epoch end it waits for the
    previous epoch's writes to land (inside the trainer's clock, so any wait is the
    trainer's) and closes the gate, so the writes this epoch end queues wait while the
    reference loop runs its epoch. `release`, last in the list, opens the gate once the
    trainer's next epoch has begun: the writes then overlap the trainer's own training,
    as they do in a runner.
    """

    def __init__(self, reporter: JobReporter) -> None:
        self.reporter = reporter
        self.gate = reporter.write_gate
        self.held = False
        self.hold, self.release = _HoldHook(self._hold), _ReleaseHook(self._release)

    def _hold(self) -> None:
        if self.gate is not None and not self.held:
            self.reporter.flush()
            self.gate.acquire()
            self.held = True

    def _release(self) -> None:
        if self.gate is not None and self.held:
            self.gate.release()
            self.held = False


class _HoldHook(Callback):
    name = "hold_writes"

    def __init__(self, hold: Callable[[], None]) -> None:
        self._hold = hold

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: Logs) -> None:
        self._hold()


class _ReleaseHook(Callback):
    name = "release_writes"

    def __init__(self, release: Callable[[], None]) -> None:
        self._release = release

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None:
        self._release()

    def on_train_end(self, trainer: Trainer, logs: Logs) -> None:
        self._release()


@dataclass
class LoopResult:
    """One run of one loop: wall time and training loss of each epoch, and where time went."""

    name: str
    samples: int  # training samples per epoch
    epoch_seconds: list[float]
    losses: list[float]
    side_seconds: float = 0.0  # metric reporting + checkpointing, inside epoch_seconds
    notes: list[str] = field(default_factory=list)
    # The SQL writes themselves, on the reporter's background thread (overlapping epochs).
    background_seconds: float = 0.0

    @classmethod
    def of(cls, name: str, samples: int, epochs: list[EpochRecord], side_seconds: float = 0.0,
           notes: list[str] | None = None, background: float = 0.0) -> LoopResult:
        return cls(name, samples, [s for s, _ in epochs], [loss for _, loss in epochs],
                   side_seconds, notes or [], background)

    @property
    def throughput(self) -> float:
        """Training samples per second over the epochs after the first."""
        steady = self.epoch_seconds[1:] or self.epoch_seconds
        return self.samples * len(steady) / sum(steady)


@dataclass
class Summary:
    """One loop over several rounds; the epochs after each run's first are pooled."""

    runs: list[LoopResult]

    @property
    def name(self) -> str:
        return self.runs[0].name

    @property
    def steady(self) -> list[float]:
        return [s for run in self.runs for s in run.epoch_seconds[1:]]

    @property
    def throughput(self) -> float:
        """Samples per second in the fastest epoch after a first.

        Other processes on the machine only ever add time, so the fastest epoch is
        the loop's own speed (timeit's rule); median and mean are printed beside it.
        """
        return self.runs[0].samples / min(self.steady)

    @property
    def median_throughput(self) -> float:
        return self.runs[0].samples / statistics.median(self.steady)

    @property
    def mean_throughput(self) -> float:
        return self.runs[0].samples * len(self.steady) / sum(self.steady)

    @property
    def side_per_epoch(self) -> float:
        """Metric reporting + checkpointing per epoch (the standard callbacks do both each one)."""
        return (sum(r.side_seconds for r in self.runs)
                / sum(len(r.epoch_seconds) for r in self.runs))

    @property
    def background_per_epoch(self) -> float:
        return (sum(r.background_seconds for r in self.runs)
                / sum(len(r.epoch_seconds) for r in self.runs))

    @property
    def side_share(self) -> float:
        """side_per_epoch over the fastest epoch: the share on a machine nothing else slows."""
        return self.side_per_epoch / min(self.steady)

    def describe(self) -> str:
        first = [r.epoch_seconds[0] for r in self.runs]
        return (f"{self.name:<30} {self.throughput:9.1f} samples/s (best epoch "
                f"{min(self.steady):.3f} s; median {self.median_throughput:.1f}/s, "
                f"mean {self.mean_throughput:.1f}/s)\n{'':<30} first epoch {first[0]:.2f} s "
                "in round 1" + (f", median {statistics.median(first[1:]):.2f} s in later rounds"
                                if len(first) > 1 else ""))


def rounds(count: int,
           pair: Callable[[bool], tuple[LoopResult, LoopResult]]) -> tuple[Summary, Summary]:
    """`count` rounds of pair(runner_first), alternating which loop goes first."""
    a: list[LoopResult] = []
    b: list[LoopResult] = []
    for i in range(count):
        results = pair(i % 2 == 0)
        for result, into in zip(results, (a, b), strict=True):
            into.append(result)
            print(f"  round {i + 1}: {result.name:<30} {result.throughput:9.1f} samples/s, epochs "
                  + " ".join(f"{s:.3f}" for s in result.epoch_seconds) + " s", flush=True)
    return Summary(a), Summary(b)


def paired_ratios(runner: Summary, reference: Summary) -> list[float]:
    """(a)'s throughput over (b)'s for each pair of epochs that ran side by side.

    The i-th epoch after the first of each run pairs (a) with (b) of the same round
    (adjacent in time when the loops take turns), so a slow spell on a shared machine
    falls on both sides of a pair and cancels in its ratio; the median of the pairs
    is the headline. The best-epoch ratio (each loop's fastest epoch, timeit's rule)
    rests on two single epochs and swings by several percent when the machine is noisy.
    """
    return [b / a for a, b in zip(runner.steady, reference.steady, strict=True)]


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1, 5, 15 min) on {os.cpu_count()} CPUs"


def compare(runner: Summary, reference: Summary, target: float,
            side_target: float | None = 0.03) -> float:
    """Print both, their ratio and the reporting share; the ratio runner / reference."""
    print(runner.describe())
    print(reference.describe())
    for note in dict.fromkeys(n for r in runner.runs + reference.runs for n in r.notes):
        print(f"  note: {note}")
    pairs = paired_ratios(runner, reference)
    ratio = statistics.median(pairs)
    q1, _, q3 = statistics.quantiles(pairs, n=4) if len(pairs) > 1 else (ratio, ratio, ratio)
    verdict = "meets" if ratio >= target else "BELOW"
    print(f"ratio (a) / (b): {ratio:.3f}, the median of {len(pairs)} paired epochs (quartiles "
          f"{q1:.3f}-{q3:.3f}; {verdict} the target {target:.2f}); "
          f"{runner.throughput / reference.throughput:.3f} at each loop's best epoch, "
          f"{runner.mean_throughput / reference.mean_throughput:.3f} at the mean")
    if any(r.side_seconds for r in runner.runs):
        print(f"(a) metric reporting + checkpointing: {1000 * runner.side_per_epoch:.1f} ms per "
              f"epoch, {100 * runner.side_share:.2f}% of the fastest epoch"
              + (f" (target <= {100 * side_target:g}%)" if side_target is not None else ""))
        if runner.background_per_epoch:
            print(f"    the SQL writes themselves, on the reporter's background thread while the "
                  f"next epoch trains: {1000 * runner.background_per_epoch:.1f} ms per epoch")
        typical = statistics.median(runner.steady)
        loop_only = typical / (typical - runner.side_per_epoch)
        print(f"ratio (a) / (b) without (a)'s reporting and checkpointing: {ratio * loop_only:.3f}")
    return ratio
