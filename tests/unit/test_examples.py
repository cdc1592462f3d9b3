"""The example specs under examples/ are valid job specs, each with its Keras twin."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from app.core.spec import JobSpec
from app.services.jobs import check_limits
from app.settings import Limits

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_are_valid_job_specs(path: Path) -> None:
    spec = JobSpec.model_validate(yaml.safe_load(path.read_text()))
    twin = path.name.removeprefix("keras-")
    assert (ROOT / "examples" / twin).exists() and (ROOT / "examples" / f"keras-{twin}").exists()
    assert spec.framework == ("keras" if path.name.startswith("keras-") else "pytorch")
    check_limits(spec, Limits())  # the default limits and resource estimates admit it
