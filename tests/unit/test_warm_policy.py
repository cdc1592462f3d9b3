"""The warm pool's policy and the start-phase report (no processes)."""

from __future__ import annotations

from app.settings import Settings
from workers.phases import StartPhases
from workers.warmpool import WarmPool


def test_warm_policies_last_both_one_framework_and_off() -> None:
    last = WarmPool(Settings(warm_runners="last"))
    assert last.wanted() == ["pytorch"]
    last.last = "keras"
    assert last.wanted() == ["keras"]
    assert WarmPool(Settings(warm_runners="both")).wanted() == ["pytorch", "keras"]
    assert WarmPool(Settings(warm_runners="off")).wanted() == []
    only = WarmPool(Settings(warm_runners="pytorch"))
    only.last = "keras"
    assert only.wanted() == ["pytorch"]  # whatever ran last
    assert WarmPool(Settings(warm_runners="keras")).wanted() == ["keras"]
    closed = WarmPool(Settings(warm_runners="both"))
    closed.close()
    assert closed.wanted() == []


def test_start_phases_are_seconds_since_the_claim_in_order() -> None:
    phases = StartPhases()
    phases.claimed_at, phases.queued_at = 100.0, 99.75
    phases.mark("spawned", 90.0)
    phases.mark("first_step", 100.5)
    phases.mark("runner_started", 100.02)
    phases.mark("runner_started", 100.4)  # the first mark wins
    report = phases.report()
    assert report["since"] == "claim" and report["warm"] is False
    assert report["queued_s"] == -0.25 and report["spawned_s"] == -10.0
    assert report["runner_started_s"] == 0.02 and report["first_step_s"] == 0.5
    assert [k for k in report if k.endswith("_s")] == ["queued_s", "spawned_s",
                                                      "runner_started_s", "first_step_s"]
