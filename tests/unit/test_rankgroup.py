"""A multi-slot job's rank processes end together (workers/rankgroup.py)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from workers.rankgroup import GROUP_GRACE_S, GroupProc, RankFailure
from workers.training.replicas import Replicas


def test_a_dead_rank_stops_the_group_after_the_grace() -> None:
    procs = [subprocess.Popen(["sleep", "60"]),
             subprocess.Popen(["sh", "-c", "sleep 0.2; kill -9 $$"])]
    group = GroupProc(procs)
    started = time.monotonic()
    assert group.wait(timeout=30) == -signal.SIGKILL  # the leader, killed by the group
    assert group.failure == RankFailure(1, -signal.SIGKILL)
    assert group.failure.describe() == "rank 1 died by SIGKILL"
    assert time.monotonic() - started < GROUP_GRACE_S + 2


def test_a_group_that_ends_well_has_no_failure() -> None:
    group = GroupProc([subprocess.Popen(["true"]), subprocess.Popen(["true"])])
    assert group.wait(timeout=10) == 0 and group.failure is None


def test_replicas_round_trip_through_the_runner_arguments() -> None:
    replicas = Replicas(slots=2, rank=1, procs=2, rendezvous=Path("/tmp/r"))
    assert Replicas.parse(replicas.argv()) == replicas
    assert Replicas.parse([]) == Replicas() and Replicas().leader
    assert not replicas.leader and replicas.distributed
