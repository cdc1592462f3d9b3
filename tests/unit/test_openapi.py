"""The OpenAPI document tells the truth about bodies, statuses and content types.

schemathesis (tests/integration/test_openapi_schemathesis.py) checks the running
server against the document; these check the document's own claims, cheaply.
"""

from __future__ import annotations

from typing import Any

import jsonschema_rs
import pytest
from pydantic import BaseModel, ValidationError

from app.core.spec import DatasetSpec, ModelSpec
from app.main import create_app
from app.settings import Settings

DOC: dict[str, Any] = create_app(Settings()).openapi()
OPERATIONS = [(path, method, op) for path, ops in DOC["paths"].items()
              for method, op in ops.items()]


def _ref(response: dict[str, Any], media_type: str = "application/json") -> str:
    return str(response["content"][media_type]["schema"].get("$ref", ""))


def test_no_fastapi_default_error_schema() -> None:
    schemas = DOC["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    assert set(schemas["ValidationErrorPublic"]["required"]) == {"error", "detail"}
    assert set(schemas["Problem"]["required"]) == {"path", "loc", "message", "type"}


@pytest.mark.parametrize(("path", "method", "op"), OPERATIONS,
                         ids=[f"{m.upper()} {p}" for p, m, _ in OPERATIONS])
def test_every_error_response_is_the_real_error_body(path: str, method: str,
                                                     op: dict[str, Any]) -> None:
    for status, response in op["responses"].items():
        if status == "422":
            assert _ref(response).endswith("/ValidationErrorPublic"), (path, method)
        elif status.startswith(("4", "5")) and path != "/readyz":
            assert _ref(response).endswith("/ErrorPublic"), (path, method, status)


def test_api_routes_document_auth_busy_and_not_found() -> None:
    for path, method, op in OPERATIONS:
        if not path.startswith("/v1/"):
            continue
        assert {"401", "503"} <= set(op["responses"]), (method, path)
        assert op["responses"]["503"]["headers"]["Retry-After"]
        assert op["security"] == [{"bearer_key": []}], (method, path)
        if "{" in path:
            assert "404" in op["responses"], (method, path)


def test_model_download_is_a_file_or_a_redirect_not_json() -> None:
    responses = DOC["paths"]["/v1/jobs/{job_id}/model"]["get"]["responses"]
    assert list(responses["200"]["content"]) == ["application/octet-stream"]
    assert {"304", "307", "404", "409"} <= set(responses)


def test_events_are_json_or_a_server_sent_stream() -> None:
    content = DOC["paths"]["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]
    assert set(content) == {"application/json", "text/event-stream"}


def test_dashboard_pages_are_not_in_the_document() -> None:
    assert all(path.startswith(("/v1/", "/healthz", "/readyz")) for path in DOC["paths"])



@pytest.mark.parametrize(("model", "fragment"), [
    (DatasetSpec, {"builtin": "iris"}),
    (DatasetSpec, {"id": "ds_abc", "builtin": None}),
    (DatasetSpec, {"builtin": "synthetic", "n_samples": 100, "sample_shape": [4],
                   "num_classes": 2}),
    (DatasetSpec, {"builtin": "iris", "id": "ds_abc"}),
    (DatasetSpec, {}),
    (DatasetSpec, {"builtin": "synthetic", "n_samples": 100}),
    (DatasetSpec, {"builtin": "iris", "n_samples": 100}),
    (DatasetSpec, {"id": "ds_abc", "num_classes": 3}),
    (DatasetSpec, {"builtin": "imagenet"}),
    (ModelSpec, {"preset": "mlp"}),
    (ModelSpec, {"preset": "mlp", "layers": None}),
    (ModelSpec, {"layers": [{"type": "dense", "units": 4}]}),
    (ModelSpec, {"layers": [{"type": "dense", "units": 4}], "preset": "mlp"}),
    (ModelSpec, {}),
])
def test_the_schema_refuses_what_the_validators_refuse(model: type[BaseModel],
                                                       fragment: dict[str, Any]) -> None:
    """The rules between fields (one source, synthetic-only fields) are in the JSON Schema."""
    try:
        model.model_validate(fragment)
        accepted = True
    except ValidationError:
        accepted = False
    assert jsonschema_rs.validator_for(model.model_json_schema()).is_valid(fragment) == accepted
