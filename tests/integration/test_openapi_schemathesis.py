"""Schemathesis over the API's own OpenAPI document, against a real server.

Every operation gets a bounded number of generated requests (valid ones and,
as schemathesis mutates them, invalid ones); each answer must be no 5xx, a
status code the document lists for that operation, a content type it lists,
and a body that matches the schema it gives. Generated ids name nothing and a
generated key is nobody's, so each request is sent a second time with a real
key and naming real resources: their 2xx and 409 answers are checked too.

One backend (SQLite): what is checked here is the HTTP contract, which does not
depend on the store; the other modules run the store's paths on both backends.
Nothing is excluded: the event stream answers JSON unless asked for
text/event-stream (no generated request asks), and the destructive operations
(DELETE, cancel) only end resources this module made.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import APIOperation, GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.db import make_engine, make_sessionmaker, transaction
from app.main import create_app
from app.services import keys, webhooks
from app.settings import Settings
from bench.stack import Stack
from tests.harness import migrate
from tests.specs import tiny_spec

pytestmark = pytest.mark.integration

OWNER = Settings().default_owner  # who a request without a key acts as (open mode)

CHECKS = [schemathesis.checks.not_a_server_error, status_code_conformance,
          content_type_conformance, response_schema_conformance]
# Enough to reach each operation's error paths (unknown ids, bad bodies, bad
# queries) while the module stays near a minute on a small box; each is valid or,
# as schemathesis mutates it (GenerationMode.NEGATIVE), invalid.
EXAMPLES_PER_OPERATION = 20

# The document as the app builds it, so that each operation is a test of its own (a
# plain pytest parameter: schemathesis's own parametrize gives every item one node id
# under pytest 9, and xdist then runs only one of them); test_served_document_is_this_one
# checks that the server serves the same document.
DOCUMENT = create_app(Settings()).openapi()
OPERATIONS = [result.ok() for result in schemathesis.openapi.from_dict(DOCUMENT)
              .get_all_operations()]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """An API server alone: jobs stay queued, nothing trains what schemathesis submits."""
    tmp: Path = tmp_path_factory.mktemp("schemathesis")
    url = f"sqlite:///{tmp / 'trainery.db'}"
    migrate(url)
    stack = Stack(url, tmp)
    try:
        stack.start_api()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def real_ids(api: Stack) -> dict[str, str]:
    """One resource of each kind, for the path parameters, and an API key of their owner."""
    job = api.submit(tiny_spec(epochs=1))
    study = api.client.post("/v1/studies", json={
        "name": "st", "base": tiny_spec(epochs=1),
        "space": {"training.optimizer.lr": {"type": "loguniform", "low": 1e-3, "high": 0.1}},
        "objective": {"metric": "val_loss", "mode": "min"},
        "searcher": {"name": "random", "max_trials": 2}})
    # Stored directly: the API refuses private targets and this box resolves no public name.
    engine = make_engine(api.database_url)
    with transaction(make_sessionmaker(engine)) as session:
        hook_id = webhooks.create(session, OWNER, "http://127.0.0.1:9/hook", ["job.finished"],
                                  allow_private=True).id
        _, token = keys.create(session, OWNER, "schemathesis")
    engine.dispose()
    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros((20, 4), np.float32), y=np.arange(20) % 2)
    dataset = api.client.post("/v1/datasets", files={"file": ("d.npz", buffer.getvalue())})
    for r in (study, dataset):
        assert r.status_code == 201, r.text
    return {"job_id": job["id"], "study_id": study.json()["id"], "webhook_id": hook_id,
            "dataset_id": dataset.json()["id"], "key": token}


def test_served_document_is_this_one(api: Stack) -> None:
    assert api.client.get("/openapi.json").json() == DOCUMENT


@pytest.mark.parametrize("operation", OPERATIONS, ids=[op.label for op in OPERATIONS])
def test_api_keeps_its_openapi_contract(operation: APIOperation[Any, Any, Any, Any], api: Stack,
                                        real_ids: dict[str, str]) -> None:
    cases = st.one_of(*(operation.as_strategy(generation_mode=mode) for mode in GenerationMode))

    @given(case=cases)
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate])
    def check(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate(base_url=api.url, checks=CHECKS)
        # The generated Authorization (when there is one) is garbage: a 401 before
        # anything else. Again with a real key, so that the rest of the route runs;
        # and naming real resources where the path has ids.
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {real_ids['key']}"}
        if case.path_parameters:
            case.path_parameters = {name: real_ids[name] for name in case.path_parameters}
        case.call_and_validate(base_url=api.url, checks=CHECKS)

    check()
