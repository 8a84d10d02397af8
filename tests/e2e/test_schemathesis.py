"""schemathesis against the /openapi.json of a real ``inferd serve`` (tiny random Qwen3): requests generated from
the schema (valid and invalid) never get a 5xx or hang; statuses and error bodies are the ones /openapi.json
documents (OpenAI's error shape)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import (  # noqa: E402
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]

KEY = "schema-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def schema_server(
    tiny_qwen3: Path, tmp_path_factory: pytest.TempPathFactory, inferd_server_factory: Any
) -> Iterator[Any]:
    # A short context and small n bound the work one generated request can ask for.
    srv = inferd_server_factory(tiny_qwen3, tmp_path_factory.mktemp("logs"), "--max-model-len", "64", "--max-n", "4",
                       "--max-waiting-requests", "64", api_key=KEY)  # fmt: skip
    yield srv
    assert srv.stop() == 0, srv.log()[-3000:]


@pytest.mark.timeout(400)
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_generated_requests_never_get_a_server_error(schema_server: Any, mode: str) -> None:
    schema = schemathesis.openapi.from_url(f"{schema_server.base_url}/openapi.json", headers=AUTH)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /v1/chat/completions", "POST /v1/completions"}
    for op in operations:
        if mode == "negative" and op.method.upper() != "POST":
            continue  # nothing to make invalid in a GET without parameters

        @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=op.as_strategy(schemathesis.GenerationMode(mode)))
        def check(case: Any) -> None:
            response = case.call_and_validate(headers=AUTH, checks=CHECKS, timeout=30)
            if response.status_code >= 400:
                body = response.json()
                assert set(body) == {"error"} and set(body["error"]) == {
                    "message",
                    "type",
                    "param",
                    "code",
                }, body

        check()
        assert schema_server.proc.poll() is None, schema_server.log()[-3000:]
    assert httpx.get(f"{schema_server.base_url}/health", timeout=5).status_code == 200  # still serving
