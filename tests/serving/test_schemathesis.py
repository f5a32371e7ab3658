"""Schemathesis generates requests from the app's own OpenAPI schema: none may get a 500.

Both valid (positive) and deliberately invalid (negative) requests for every operation, a few
examples each so the suite stays quick. Driven through Hypothesis directly: schemathesis'
lazy pytest fixture loader does not run on pytest 9.
"""

from __future__ import annotations

from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402

from productvlm.serving.app import create_app  # noqa: E402
from productvlm.serving.config import ServeConfig  # noqa: E402


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_generated_requests_never_get_a_server_error(predictor: Any, mode: Any) -> None:
    app = create_app(predictor, ServeConfig(model="tiny-phi3v", max_wait_ms=0))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /v1/predict", "GET /healthz",
                                                "GET /v1/model"}
    seen: list[tuple[str, int]] = []

    for op in operations:
        if mode == GenerationMode.NEGATIVE and op.method.upper() == "GET":
            continue  # no parameters: nothing to make invalid
        @given(case=op.as_strategy(mode))
        @settings(max_examples=6, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            response = case.call()
            seen.append((case.operation.label, response.status_code))
            assert response.status_code < 500, (case.operation.label, response.text[:300])
            if response.status_code >= 400 and response.status_code not in (404, 405):
                body = response.json()  # every refusal is the JSON error naming its cause
                assert body["status"] == response.status_code and body["error"], body

        check()
    assert any(label == "POST /v1/predict" for label, _ in seen)
