"""ASHA against random search with the same max_trials, through a real stack; and the
study overhead between one trial's end and the next one's start.

    python -m bench.studies [--trials 12] [--epochs 9] [--workers 1]

Both studies search the learning rate (loguniform 1e-4..0.3) and the hidden width (int
2..128, log) of a one-hidden-layer MLP on the builtin digits dataset, objective
val_accuracy. ASHA samples with the random sampler and the same seed, so trial n of both
studies has the same params: the comparison is only about which trials ASHA trains to the
full budget. A real API, Celery worker(s) and a SQLite store run in a temporary directory;
the Redis at TRAINERY_BROKER_URL (default 127.0.0.1:6379) carries the wake-ups.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from app.db import migrate
from bench.stack import Stack

SPACE = {
    "training.optimizer.lr": {"type": "loguniform", "low": 1e-4, "high": 0.3},
    "model.layers[0].units": {"type": "int", "low": 2, "high": 128, "log": True},
}


def base(epochs: int) -> dict[str, Any]:
    return {"name": "digits", "framework": "pytorch",
            "dataset": {"builtin": "digits", "validation_split": 0.25},
            "model": {"layers": [{"type": "dense", "units": 32, "activation": "relu"}]},
            "training": {"epochs": epochs, "batch_size": 64, "seed": 0,
                         "optimizer": {"name": "sgd", "lr": 0.01}}}


def run_study(stack: Stack, searcher: dict[str, Any], epochs: int) -> dict[str, Any]:
    """Create the study, wait for it to end, and return it with its trials and timings."""
    started = time.monotonic()
    r = stack.client.post("/v1/studies", json={
        "name": searcher["name"], "base": base(epochs), "space": SPACE,
        "objective": {"metric": "val_accuracy", "mode": "max"}, "searcher": searcher})
    r.raise_for_status()
    study_id = r.json()["id"]
    study: dict[str, Any] = stack.client.get(f"/v1/studies/{study_id}").json()
    while study["state"] == "running":
        time.sleep(0.5)
        study = stack.client.get(f"/v1/studies/{study_id}").json()
    study["wall_s"] = time.monotonic() - started
    study["trial_rows"] = stack.client.get(f"/v1/studies/{study_id}/trials").json()
    study["gaps"] = overhead(stack, study["trial_rows"])
    return study


def _ts(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["ts"]).timestamp()


def overhead(stack: Stack, trials: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Seconds from each run's end to the next run's claim, and to its first training step
    (the runner's "training on" event, after framework import, data and model)."""
    ends, claims, starts = [], [], []
    for t in trials:
        for e in stack.client.get(f"/v1/jobs/{t['job_id']}/events").json():
            if e["kind"] == "state" and e["to_status"] == "succeeded":
                ends.append(_ts(e))
            elif e["kind"] == "state" and e["to_status"] == "running":
                claims.append(_ts(e))
            elif e["message"].startswith("training on"):
                starts.append(_ts(e))
    gaps: dict[str, list[float]] = {"claim": [], "first_step": []}
    for end in ends:
        later_claims = [c - end for c in claims if c > end]
        later_starts = [s - end for s in starts if s > end]
        if later_claims and later_starts:
            gaps["claim"].append(min(later_claims))
            gaps["first_step"].append(min(later_starts))
    return gaps


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"load before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="trainery-bench-studies-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'trainery.db'}"
        migrate(url)
        stack = Stack(url, Path(tmp), extra_env={"TRAINERY_MAINTENANCE_INTERVAL_S": "1"})
        try:
            stack.start_api()
            for i in range(args.workers):
                stack.start_worker(f"b{i}", env={"TRAINERY_WARM_RUNNERS": "last"})
            common = {"max_trials": args.trials, "max_concurrent_trials": args.workers,
                      "seed": args.seed}
            random_study = run_study(stack, {"name": "random", **common}, args.epochs)
            asha_study = run_study(stack, {"name": "asha", **common, "sampler": "random",
                                           "min_epochs": 1, "reduction_factor": 3},
                                   args.epochs)
        finally:
            stack.stop()
    print(f"load after: {os.getloadavg()[0]:.2f}")
    report(random_study, asha_study)


def report(random_study: dict[str, Any], asha_study: dict[str, Any]) -> None:
    """Print both studies' best, epochs and wall time, the ratios, and the overhead."""
    for s in (random_study, asha_study):
        best = s["best_trial"]
        print(f"{s['name']:>6}: best val_accuracy {best['value']:.4f} (trial {best['number']}, "
              f"epoch {best['epoch']}, {best['params']}); epochs trained {s['epochs_trained']}; "
              f"wall {s['wall_s']:.0f}s; trials {s['trials']}")
    rb, ab = random_study["best_trial"]["value"], asha_study["best_trial"]["value"]
    share = asha_study["epochs_trained"] / random_study["epochs_trained"]
    print(f"asha/random: best {ab / rb:.4f} ({100 * (ab - rb) / rb:+.2f}%), epochs {share:.2%}, "
          f"wall {asha_study['wall_s'] / random_study['wall_s']:.2f}x")
    gaps = {k: random_study["gaps"][k] + asha_study["gaps"][k] for k in ("claim", "first_step")}
    for k, label in (("claim", "trial end -> next claim"),
                     ("first_step", "trial end -> next first training step")):
        print(f"overhead {label}: p50 {statistics.median(gaps[k]):.2f}s "
              f"p95 {pct(gaps[k], 0.95):.2f}s (n={len(gaps[k])})")


if __name__ == "__main__":
    main()
