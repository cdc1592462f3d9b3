"""Spec validation: every bad field is named with its JSON path and a readable reason."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from app.core.errors import InvalidInput, validation_problems
from app.core.spec import JobSpec
from app.services.jobs import check_limits
from app.settings import Limits
from tests.specs import design_spec


def problems(body: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(body)
    return {p["path"]: p["message"] for p in validation_problems(info.value.errors())}


def test_design_spec_is_valid_and_defaults_fill_in() -> None:
    spec = JobSpec.model_validate(design_spec())
    assert spec.training.epochs == 20 and spec.loss_name() == "cross_entropy"
    assert spec.metric_names() == ["loss", "accuracy"]
    minimal = JobSpec.model_validate({"framework": "keras", "dataset": {"builtin": "iris"},
                                      "model": {"preset": "mlp"}})
    assert minimal.training.batch_size == 32 and minimal.dataset.validation_split == 0.2


@pytest.mark.parametrize(("change", "path", "words"), [
    ({"framework": "jax"}, "framework", "pytorch"),
    ({"model": {"layers": [{"type": "lstm", "units": 3}]}}, "model.layers[0]", "lstm"),
    ({"model": {"layers": [{"type": "dense", "units": 0}]}}, "model.layers[0].units", "greater"),
    ({"model": {"layers": [{"type": "dense", "units": "many"}]}}, "model.layers[0].units",
     "integer"),
    ({"model": {}}, "model", "exactly one"),
    ({"model": {"preset": "vgg"}}, "model.preset", "mlp"),
    ({"dataset": {"builtin": "mnist"}}, "dataset.builtin", "unknown builtin dataset"),
    ({"dataset": {"builtin": "synthetic"}}, "dataset", "needs n_samples"),
    ({"dataset": {"builtin": "digits", "n_samples": 10}}, "dataset", "only apply"),
    ({"dataset": {"builtin": "digits", "validation_split": 1.5}}, "dataset.validation_split",
     "less than"),
    ({"task": "regression"}, "task", "classification dataset"),
    ({"bogus": 1}, "bogus", "unknown field"),
    ({"priority": 1000}, "priority", "less than or equal"),
])
def test_bad_fields_are_named(change: dict[str, Any], path: str, words: str) -> None:
    found = problems(design_spec(**change))
    assert path in found, found
    assert words in found[path]


@pytest.mark.parametrize(("training", "path"), [
    ({"epochs": -1}, "training.epochs"),
    ({"batch_size": 0}, "training.batch_size"),
    ({"optimizer": {"name": "adam", "lr": -1}}, "training.optimizer.lr"),
    ({"optimizer": {"name": "adam", "nesterov": True}}, "training.optimizer"),
    ({"loss": "hinge"}, "training.loss"),
    ({"metrics": ["accuracy", "f1"]}, "training.metrics[1]"),
    ({"early_stopping": {"monitor": "val_mae"}}, "training.early_stopping.monitor"),
    ({"precision": "fp8"}, "training.precision"),
    ({"lr_schedule": {"name": "exp"}}, "training.lr_schedule.name"),
    ({"typo_field": 1}, "training.typo_field"),
])
def test_bad_training_fields(training: dict[str, Any], path: str) -> None:
    spec = design_spec()
    spec["training"] = {**spec["training"], **training}
    assert path in problems(spec)


def test_missing_required_fields_each_reported() -> None:
    found = problems({"name": "x"})
    assert found["framework"] == "this field is required"
    assert found["dataset"] == found["model"] == "this field is required"


def test_validation_monitor_needs_a_split() -> None:
    spec = design_spec()
    spec["dataset"] = {"builtin": "digits", "validation_split": 0.0}
    assert "training.early_stopping.monitor" in problems(spec)


def test_limits_are_settings() -> None:
    spec = JobSpec.model_validate(design_spec(training={"epochs": 5000, "batch_size": 64}))
    with pytest.raises(InvalidInput) as info:
        check_limits(spec, Limits())
    (problem,) = info.value.detail
    assert problem["path"] == "training.epochs" and "at most 1000" in problem["message"]
    check_limits(spec, Limits(max_epochs=10_000))
    wide = JobSpec.model_validate(design_spec(
        model={"layers": [{"type": "dense", "units": 100_000}]}))
    with pytest.raises(InvalidInput) as info:
        check_limits(wide, Limits())
    assert info.value.detail[0]["path"] == "model.layers[0].units"


def test_synthetic_size_is_bounded() -> None:
    spec = JobSpec.model_validate(design_spec(dataset={
        "builtin": "synthetic", "n_samples": 10_000_000, "sample_shape": [2000, 2000, 3],
        "num_classes": 10}))
    with pytest.raises(InvalidInput) as info:
        check_limits(spec, Limits())
    paths = {p["path"] for p in info.value.detail}
    assert paths == {"dataset.n_samples", "dataset.sample_shape"}
