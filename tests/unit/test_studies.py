"""Studies: request validation, ASHA's promotion rule, and controller decisions on a real store."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.core.errors import InvalidInput, InvalidTransition
from app.core.states import JobStatus
from app.db import transaction
from app.models import Job, Study, StudyTrial
from app.schemas.studies import StudyCreate, StudyPatch
from app.services import lifecycle
from app.services.studies import asha, controller, service
from app.services.studies import space as sp
from app.services.studies.validation import asha_rungs, validate
from app.settings import Limits
from tests.specs import tiny_spec

LIMITS = Limits()


def study_request(searcher: dict[str, Any], space: dict[str, Any] | None = None,
                  objective: dict[str, Any] | None = None, **base: Any) -> dict[str, Any]:
    spec = tiny_spec(epochs=base.pop("epochs", 4), **base)
    spec["model"] = {"layers": [{"type": "dense", "units": 16, "activation": "relu"}]}
    return {
        "name": "s", "base": spec,
        "space": space or {"training.optimizer.lr": {"type": "loguniform", "low": 1e-3,
                                                     "high": 0.1},
                           "model.layers[0].units": {"type": "int", "low": 4, "high": 64,
                                                     "log": True}},
        "objective": objective or {"metric": "val_accuracy", "mode": "max"},
        "searcher": searcher,
    }


def problems(body: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(InvalidInput) as info:
        validate(StudyCreate.model_validate(body), LIMITS)
    return {p["path"]: p["message"] for p in info.value.detail}


# -- validation ---------------------------------------------------------------------------


def test_paths_parse_resolve_and_apply() -> None:
    assert sp.parse_path("model.layers[0].units") == ["model", "layers", 0, "units"]
    spec: dict[str, Any] = {"model": {"layers": [{"units": 4}]}, "framework": "pytorch"}
    out = sp.apply(spec, {"model.layers[0].units": 8, "framework": "keras"})
    assert out == {"model": {"layers": [{"units": 8}]}, "framework": "keras"}
    assert spec["model"]["layers"][0]["units"] == 4  # a copy
    for bad in ("model..x", "model.layers[x]", "1a", ""):
        with pytest.raises(sp.PathError):
            sp.parse_path(bad)
    with pytest.raises(sp.PathError):
        sp.get_value(spec, "model.layers[3].units")


def test_valid_request_gives_a_plan() -> None:
    plan = validate(StudyCreate.model_validate(study_request(
        {"name": "asha", "max_trials": 9, "min_epochs": 1, "reduction_factor": 3}, epochs=9)),
        LIMITS)
    assert plan.rungs == [1, 3, 9]
    assert asha_rungs(1, 2, 3, 5) == [1, 2, 5]
    assert asha_rungs(2, 3, 4, 10) == [2, 6, 10]


def test_unknown_path_and_type_mismatch_are_named() -> None:
    found = problems(study_request(
        {"name": "random", "max_trials": 2},
        space={"training.optimiser.lr": {"type": "uniform", "low": 0.1, "high": 0.2},
               "model.layers[2].units": {"type": "int", "low": 1, "high": 4},
               "model.layers[0].units": {"type": "uniform", "low": 4, "high": 8},
               "training.optimizer.lr": {"type": "int", "low": 1, "high": 2}}))
    assert "not in the base spec" in found["space.training.optimiser.lr"]
    assert "not in the base spec" in found["space.model.layers[2].units"]
    assert "integer field" in found["space.model.layers[0].units"]
    assert "float field" in found["space.training.optimizer.lr"]


def test_bounds_are_checked_against_the_spec_schema_and_limits() -> None:
    found = problems(study_request(
        {"name": "random", "max_trials": 2},
        space={"training.optimizer.lr": {"type": "loguniform", "low": 1e-3, "high": 50},
               "model.layers[0].units": {"type": "int", "low": 0, "high": 99999},
               "training.optimizer.name": {"type": "choice", "values": ["adam", "lion"]},
               "framework": {"type": "choice", "values": ["pytorch", "keras"]}}))
    assert "lr = 50" in found["space.training.optimizer.lr.high"]
    assert "units = 0" in found["space.model.layers[0].units.low"]
    assert "at most 8192" in found["space.model.layers[0].units.high"]
    assert "'lion'" in found["space.training.optimizer.name.values[1]"]
    assert not any(p.startswith("space.framework") for p in found)


def test_the_base_and_every_bound_are_checked_against_the_resource_estimates() -> None:
    request = study_request({"name": "random", "max_trials": 2})
    request["base"]["model"]["layers"].append({"type": "dense", "units": 16})
    limits = Limits(max_params=1000)
    with pytest.raises(InvalidInput) as info:
        validate(StudyCreate.model_validate(request), limits)
    found = {p["path"]: p["message"] for p in info.value.detail}
    assert "units = 64" in found["space.model.layers[0].units.high"]
    assert "TRAINERY_LIMIT_MAX_PARAMS" in found["space.model.layers[0].units.high"]
    request["base"]["model"]["layers"][1]["units"] = 200
    with pytest.raises(InvalidInput) as info:
        validate(StudyCreate.model_validate(request), limits)
    assert "TRAINERY_LIMIT_MAX_PARAMS" in {p["path"]: p["message"]
                                           for p in info.value.detail}["base.model.layers"]


def test_grid_needs_steps_and_objective_must_be_reported() -> None:
    found = problems(study_request(
        {"name": "grid", "max_trials": 4},
        objective={"metric": "val_mae", "mode": "min"}))
    assert "step" in found["space.training.optimizer.lr"]
    assert "model.layers[0].units" not in found  # an int range is finite
    assert "val_accuracy" in found["objective.metric"]
    no_val = study_request({"name": "random", "max_trials": 2})
    no_val["base"]["dataset"]["validation_split"] = 0.0
    assert "'val_accuracy'" in problems(no_val)["objective.metric"]


def test_asha_refusals() -> None:
    body = study_request({"name": "asha", "max_trials": 4, "min_epochs": 4}, epochs=4,
                         space={"training.epochs": {"type": "int", "low": 1, "high": 3}})
    body["base"]["training"]["lr_schedule"] = {"name": "cosine"}
    found = problems(body)
    assert "below base.training.epochs" in found["searcher.min_epochs"]
    assert "rung budgets" in found["space.training.epochs"]
    assert "cosine" in found["base.training.lr_schedule.name"]
    with pytest.raises(ValidationError) as info:
        StudyCreate.model_validate(study_request({"name": "tpe", "max_trials": 2,
                                                  "min_epochs": 1}))
    assert "only apply to the asha" in str(info.value)


# -- ASHA's rule ----------------------------------------------------------------------------


def rt(number: int, state: str, rung: int, **values: float) -> asha.RungTrial:
    return asha.RungTrial(number, state, rung, {int(k[1:]): v for k, v in values.items()})


def test_asha_promotes_the_top_third_highest_rung_first() -> None:
    rungs = [1, 3, 9]
    trials = [rt(0, "paused", 0, e1=0.5), rt(1, "paused", 0, e1=0.9), rt(2, "paused", 0, e1=0.7)]
    assert asha.promotion(trials, rungs, 3, "max", exhausted=False) == (1, 1)
    assert asha.promotion(trials[:2], rungs, 3, "max", exhausted=False) is None  # 2 // 3 == 0
    assert asha.promotion(trials[:2], rungs, 3, "max", exhausted=True) == (1, 1)  # ceil
    assert asha.promotion(trials, rungs, 3, "min", exhausted=False) == (0, 1)
    # trial 1 already went on: nobody else at rung 0 is in the top third
    done = [trials[0], rt(1, "running", 1, e1=0.9), trials[2]]
    assert asha.promotion(done, rungs, 3, "max", exhausted=False) is None
    # a higher rung goes first
    high = [*trials[:1], rt(3, "paused", 1, e1=0.95, e3=0.96), rt(1, "paused", 1, e1=0.9, e3=0.9),
            trials[2]]
    assert asha.promotion(high, rungs, 3, "max", exhausted=True) == (3, 2)


# -- the controller on a real store ---------------------------------------------------------


def create(factory: sessionmaker[Session], body: dict[str, Any]) -> str:
    with transaction(factory) as session:
        return service.create(session, StudyCreate.model_validate(body), "alice", LIMITS).id


def trials_of(factory: sessionmaker[Session], study_id: str) -> list[StudyTrial]:
    with factory() as session:
        return list(session.scalars(select(StudyTrial).where(StudyTrial.study_id == study_id)
                                    .order_by(StudyTrial.number)))


def run_job(factory: sessionmaker[Session], job_id: str, accuracy: list[float],
            outcome: str = "succeed") -> None:
    """Play a worker: claim, record epochs, and end the job."""
    with transaction(factory) as session:
        job = session.get_one(Job, job_id)
        start, epochs = job.progress_epoch, int(job.spec["training"]["epochs"])
        attempt = lifecycle.claim(session, job_id, "w")
        assert attempt is not None
        for i, acc in enumerate(accuracy[start:epochs], start=start + 1):
            lifecycle.record_epoch(session, job_id, attempt, i, epochs,
                                   {"loss": 1 - acc, "val_accuracy": acc}, None)
        if outcome == "succeed":
            assert lifecycle.succeed(session, job_id, attempt)
        else:
            assert lifecycle.fail(session, job_id, attempt, "user_error", "bad")


def tick(factory: sessionmaker[Session], study_id: str) -> list[tuple[str, str]]:
    return controller.tick(factory, study_id, LIMITS)


def public(factory: sessionmaker[Session], study_id: str) -> Any:
    with factory() as session:
        return service.to_public(session, service.get(session, study_id, "alice"))


def test_studies_page_through_a_cursor_and_a_bad_cursor_is_named(
        factory: sessionmaker[Session]) -> None:
    made = [create(factory, study_request({"name": "random", "max_trials": 1}))
            for _ in range(3)]
    seen: list[str] = []
    cursor = None
    with factory() as session:
        while True:
            page, cursor = service.list_studies(session, "alice", state=None, limit=2,
                                                cursor=cursor)
            seen += [s.id for s in page]
            if cursor is None:
                break
        # Each once across pages (created in one instant, ties go by id: no order asserted).
        assert sorted(seen) == sorted(made)
        with pytest.raises(InvalidInput) as refused:
            service.list_studies(session, "alice", state=None, limit=2, cursor="not-one")
    assert refused.value.detail[0]["path"] == "cursor"


def test_random_study_keeps_concurrency_and_ends(factory: sessionmaker[Session]) -> None:
    study_id = create(factory, study_request({"name": "random", "max_trials": 3,
                                              "max_concurrent_trials": 2, "seed": 7}))
    wakes = tick(factory, study_id)
    assert len(wakes) == 2
    assert tick(factory, study_id) == []  # nothing changed: nothing decided
    first = trials_of(factory, study_id)
    assert [t.number for t in first] == [0, 1] and first[0].params != first[1].params
    with factory() as session:
        job = session.get_one(Job, first[0].job_id)
        assert job.status == "queued" and job.owner == "alice"
        assert job.spec["training"]["optimizer"]["lr"] == first[0].params["training.optimizer.lr"]
        assert job.spec["model"]["layers"][0]["units"] == first[0].params["model.layers[0].units"]
    run_job(factory, first[0].job_id or "", [0.5, 0.6, 0.7, 0.8])
    assert len(tick(factory, study_id)) == 1
    ts = trials_of(factory, study_id)
    assert [t.state for t in ts] == ["completed", "running", "running"]
    assert ts[0].value == 0.8 and ts[0].value_epoch == 4
    run_job(factory, ts[1].job_id or "", [0.9, 0.95, 0.9, 0.9])
    run_job(factory, ts[2].job_id or "", [0.1, 0.1, 0.1, 0.1], outcome="fail")
    assert tick(factory, study_id) == []
    study = public(factory, study_id)
    assert study.state == "succeeded" and "all 3 trials ended" in (study.end_reason or "")
    assert study.trials["completed"] == 2 and study.trials["failed"] == 1
    assert study.best_trial.number == 1 and study.best_trial.value == 0.95
    assert study.best_trial.epoch == 2 and study.epochs_trained == 12
    with factory() as session:  # the study page's chart: one point per improvement, then held
        points = service.best_over_time(session, service.get(session, study_id, "alice"))
    assert [(p["value"], p["trial"]) for p in points] == [
        (0.5, 0), (0.6, 0), (0.7, 0), (0.8, 0), (0.9, 1), (0.95, 1), (0.95, 1)]
    assert [p["t"] for p in points] == sorted(p["t"] for p in points)
    assert points[-1]["t"] > points[-2]["t"]  # the failed trial's epochs came later


def test_goal_and_failure_cap_end_the_study(factory: sessionmaker[Session]) -> None:
    study_id = create(factory, study_request(
        {"name": "tpe", "max_trials": 10, "max_concurrent_trials": 2},
        objective={"metric": "val_accuracy", "mode": "max", "goal": 0.9}))
    tick(factory, study_id)
    first, second = trials_of(factory, study_id)
    run_job(factory, first.job_id or "", [0.5, 0.9, 0.95, 0.95])
    tick(factory, study_id)
    study = public(factory, study_id)
    assert study.state == "succeeded" and "goal reached" in study.end_reason
    with factory() as session:  # the other trial was cancelled
        assert session.get_one(Job, second.job_id).status == "cancelled"
    tick(factory, study_id)
    assert trials_of(factory, study_id)[1].state == "cancelled"

    failing = create(factory, study_request({"name": "random", "max_trials": 5,
                                             "max_failed_trials": 0}))
    tick(factory, failing)
    run_job(factory, trials_of(factory, failing)[0].job_id or "", [0.1], outcome="fail")
    tick(factory, failing)
    study = public(factory, failing)
    assert study.state == "failed" and "max_failed_trials is 0" in study.end_reason


def test_grid_visits_every_point_once(factory: sessionmaker[Session]) -> None:
    study_id = create(factory, study_request(
        {"name": "grid", "max_trials": 10, "max_concurrent_trials": 3},
        space={"training.optimizer.name": {"type": "choice", "values": ["adam", "sgd"]},
               "model.layers[0].units": {"type": "int", "low": 8, "high": 16, "step": 8}}))
    seen = []
    for _ in range(3):
        tick(factory, study_id)
        for t in trials_of(factory, study_id):
            if t.state == "running":
                run_job(factory, t.job_id or "", [0.5] * 4)
    tick(factory, study_id)
    seen = [tuple(sorted(t.params.items())) for t in trials_of(factory, study_id)]
    assert len(seen) == 4 == len(set(seen))
    assert public(factory, study_id).state == "succeeded"


def test_asha_pauses_promotes_resumes_and_prunes(factory: sessionmaker[Session]) -> None:
    study_id = create(factory, study_request(
        {"name": "asha", "max_trials": 4, "max_concurrent_trials": 1, "min_epochs": 1,
         "reduction_factor": 3, "max_rungs": 3, "sampler": "random"}, epochs=9))
    curves = {0: [0.5] * 9, 1: [0.9] * 9, 2: [0.6] * 9, 3: [0.7] * 9}
    for _ in range(30):
        wakes = tick(factory, study_id)
        if not wakes:
            break
        (job_id, _q), = wakes
        with factory() as session:
            number = session.scalar(select(StudyTrial.number).where(StudyTrial.job_id == job_id))
        assert number is not None
        run_job(factory, job_id, curves[number])
    study = public(factory, study_id)
    assert study.state == "succeeded", study
    ts = {t.number: t for t in trials_of(factory, study_id)}
    assert ts[1].state == "completed" and ts[1].rung == 2 and ts[1].value == 0.9
    assert {t.state for n, t in ts.items() if n != 1} <= {"pruned", "completed"}
    assert any(t.state == "pruned" for t in ts.values())
    assert study.best_trial.number == 1
    # fewer epochs than 4 trials x 9
    assert study.epochs_trained < 36
    with factory() as session:
        job = session.get_one(Job, ts[1].job_id)
        assert job.status == "succeeded" and job.progress_epoch == 9
        events = [e.message for e in lifecycle_events(session, job.id)]
    assert sum("promoted by asha" in m for m in events) == 2


def lifecycle_events(session: Session, job_id: str) -> list[Any]:
    from app.models import JobEvent
    return list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id)
                                .order_by(JobEvent.id)))


def test_concurrent_ticks_never_duplicate_a_trial(factory: sessionmaker[Session]) -> None:
    study_id = create(factory, study_request({"name": "random", "max_trials": 6,
                                              "max_concurrent_trials": 3}))
    results: list[int] = []

    def go() -> None:
        results.append(len(tick(factory, study_id)))

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(results) == 3
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(StudyTrial)) == 3
        assert session.get_one(Study, study_id).trials_created == 3
        assert session.scalar(select(func.count()).select_from(Job)) == 3


def test_patch_and_cancel(factory: sessionmaker[Session]) -> None:
    study_id = create(factory, study_request({"name": "random", "max_trials": 3}))
    tick(factory, study_id)
    with transaction(factory) as session:
        service.patch(session, study_id, "alice", StudyPatch(max_concurrent_trials=3))
    assert len(tick(factory, study_id)) == 2
    with transaction(factory) as session, pytest.raises(InvalidInput):
        service.patch(session, study_id, "alice", StudyPatch(max_trials=2))
    with transaction(factory) as session:
        service.cancel(session, study_id, "alice")
    with transaction(factory) as session, pytest.raises(InvalidTransition):
        service.cancel(session, study_id, "alice")
    tick(factory, study_id)
    assert {t.state for t in trials_of(factory, study_id)} == {"cancelled"}
    with factory() as session:
        assert set(session.scalars(select(Job.status))) == {JobStatus.CANCELLED.value}
    assert public(factory, study_id).state == "cancelled"
    with factory() as session, pytest.raises(service.StudyNotFound):
        service.get(session, study_id, "bob")


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[2] / "examples" / "studies")
                                        .glob("*.yaml")), ids=lambda p: p.name)
def test_example_studies_are_valid(path: Path) -> None:
    plan = validate(StudyCreate.model_validate(yaml.safe_load(path.read_text())), LIMITS)
    assert plan.rungs is None or len(plan.rungs) >= 2
