"""Schemathesis over the API's own OpenAPI document, against a real server.

Every operation gets a bounded number of generated requests (valid ones and,
as schemathesis mutates them, invalid ones); each answer must be no 5xx, a
status code the document lists for that operation, a content type it lists,
and a body that matches the schema it gives. One backend (SQLite): what is
checked here is the HTTP contract, which does not depend on the store; the
store-specific paths are covered on both backends by the other modules.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app
from app.settings import Settings
from bench.stack import Stack
from tests.harness import migrate

CHECKS = [schemathesis.checks.not_a_server_error, status_code_conformance,
          content_type_conformance, response_schema_conformance]
# Enough to reach each operation's error paths (unknown ids, bad bodies, bad
# queries) while the whole module stays within about a minute on a small box.
EXAMPLES_PER_OPERATION = 20


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


# The document as the app builds it, so that each operation is a test of its own;
# test_served_document_is_this_one checks that the server serves the same.
DOCUMENT = create_app(Settings()).openapi()
schema = schemathesis.openapi.from_dict(DOCUMENT)


def test_served_document_is_this_one(api: Stack) -> None:
    assert api.client.get("/openapi.json").json() == DOCUMENT


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None,
          suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
def test_api_keeps_its_openapi_contract(case: schemathesis.Case, api: Stack) -> None:
    case.call_and_validate(base_url=api.url, checks=CHECKS)
