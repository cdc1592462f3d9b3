"""Resource estimates at submit: parameters, dataset bytes and memory against the limits."""

from __future__ import annotations

from typing import Any

import pytest

from app.core.errors import InvalidInput
from app.core.estimate import DataShape, builtin_data, estimate, uploaded_data
from app.core.modelspec import resolve
from app.core.spec import JobSpec
from app.services.jobs import check_limits
from app.settings import Limits


def spec_of(dataset: dict[str, Any], model: dict[str, Any], **training: Any) -> JobSpec:
    return JobSpec.model_validate({"framework": "pytorch", "dataset": dataset, "model": model,
                                   "training": training})


def refused(spec: JobSpec, data: DataShape | None = None,
            limits: Limits | None = None) -> dict[str, str]:
    with pytest.raises(InvalidInput) as info:
        check_limits(spec, limits or Limits(), data=data)
    return {p["path"]: p["message"] for p in info.value.detail}


SYNTHETIC_IMAGES = {"builtin": "synthetic", "n_samples": 10, "sample_shape": [1000, 1000, 1],
                    "num_classes": 2}


def test_four_billion_parameters_are_refused_naming_the_layers_and_the_limit() -> None:
    spec = spec_of({"builtin": "digits"}, {"layers": [{"type": "dense", "units": 8192}] * 64})
    found = refused(spec)
    assert list(found) == ["model.layers"]
    assert "4,228,988,938 trainable parameters" in found["model.layers"]
    assert "at most 100,000,000 (TRAINERY_LIMIT_MAX_PARAMS)" in found["model.layers"]


def test_four_terabytes_of_synthetic_data_are_refused() -> None:
    spec = spec_of({"builtin": "synthetic", "n_samples": 10**6, "sample_shape": [10**6],
                    "num_classes": 2}, {"layers": [{"type": "dense", "units": 2}]})
    found = refused(spec)
    assert "3.6 TiB of synthetic data" in found["dataset.n_samples"]
    assert "TRAINERY_LIMIT_MAX_DATASET_BYTES" in found["dataset.n_samples"]


def test_wide_convolutions_on_megapixel_images_are_refused() -> None:
    layers = [{"type": "conv2d", "filters": 8192}] * 63 + [{"type": "global_avgpool"}]
    assert "TRAINERY_LIMIT_MAX_PARAMS" in refused(spec_of(SYNTHETIC_IMAGES,
                                                          {"layers": layers}))["model.layers"]
    # Few parameters, but one batch's activations do not fit a worker: the batch is named.
    narrow = [{"type": "conv2d", "filters": 16, "activation": "relu"},
              {"type": "global_avgpool"}]
    spec = spec_of({**SYNTHETIC_IMAGES, "sample_shape": [700, 700, 1]}, {"layers": narrow},
                   batch_size=512)
    message = refused(spec)["training.batch_size"]
    assert "TRAINERY_LIMIT_JOB_MEMORY_BYTES" in message and "activations of one batch" in message
    # Batch 1 trains, but evaluation's batches of 1024 still do not fit: the model is named.
    message = refused(spec_of(SYNTHETIC_IMAGES, {"layers": narrow}, batch_size=1))["model.layers"]
    assert "evaluation, which runs batches of at least 1024" in message


def test_the_memory_estimate_adds_up_its_parts() -> None:
    spec = spec_of({"builtin": "iris"}, {"layers": [{"type": "dense", "units": 10,
                                                      "activation": "relu"}]}, batch_size=8)
    data = builtin_data(spec.dataset)
    assert data == DataShape(150, (4,), 4, 8, 3)
    need = estimate(spec, resolve(spec.model, data.sample_shape), data)
    params = 4 * 10 + 10 + 10 * 3 + 3
    assert need.params == params
    assert (need.weights, need.gradients, need.optimizer) == (4 * params, 4 * params,
                                                              8 * params)  # adam: 2 states
    # Evaluation batches (1024 x the widest of input 4, hidden 10, logits 3) outweigh training.
    assert need.activations == 4 * 2 * 1024 * 10 and need.evaluation_bound
    assert need.dataset == 2 * 150 * (4 * 4 + 8)
    assert need.total == sum((need.weights, need.gradients, need.optimizer, need.activations,
                              need.dataset))


def test_an_uploads_stored_shape_counts_against_the_memory_budget() -> None:
    data = uploaded_data(60_000, 10_000, [28, 28, 1], "uint8", 10)
    assert data.nbytes == 70_000 * (784 + 8)
    spec = JobSpec.model_validate({"framework": "pytorch", "dataset": {"id": "ds_abc"},
                                   "model": {"preset": "lenet5"}})
    check_limits(spec, Limits(), data=data)
    found = refused(spec, data, Limits(job_memory_bytes=100 << 20))
    assert "dataset" in found and "dataset 105.7 MiB" in found["dataset"]
