"""Schemathesis against the project's own OpenAPI schema, served by a live ``hubbub serve``.

Every operation of ``GET /api/openapi.json`` is called with generated requests, both valid ones
(positive) and ones that break the schema (negative), as a user with a bearer token and as an
anonymous caller. The checks: never a 5xx (``not_a_server_error``); every answer is a status the
schema lists (``status_code_conformance``) with the content type (``content_type_conformance``)
and the body shape (``response_schema_conformance``) it documents; negative data is refused
(``negative_data_rejection``). Kept small (``EXAMPLES`` per operation and mode) so the whole run
takes a minute or two; the number of requests made is printed.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.live.servers import HubbubServer

pytestmark = [pytest.mark.live, pytest.mark.timeout(400)]

EXAMPLES = 30  # per operation, per mode, per caller
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


def run_operation(operation: Any, mode: GenerationMode, base: str, headers: dict[str, str],
                  statuses: Counter[int], failures: list[str]) -> None:
    checks = [*CHECKS, negative_data_rejection] if mode is GenerationMode.NEGATIVE else CHECKS

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: Any) -> None:
        response = case.call(base_url=base, headers=headers, timeout=15)
        statuses[response.status_code] += 1
        try:
            case.validate_response(response, checks=checks, headers=headers)
        except (Exception, BaseExceptionGroup) as exc:  # collect: one run reports every operation's
            # problems (schemathesis raises its FailureGroup, a BaseExceptionGroup)
            failures.append(f"{operation.label} [{mode.value}] {response.status_code}: "
                            f"{str(exc).splitlines()[0][:300]}\n    {case.as_curl_command(headers)[:600]}")
            raise

    with contextlib.suppress(Exception, BaseExceptionGroup):
        fuzz()  # a failure is recorded above (Hypothesis re-raises the shrunk example once more)


def test_the_http_api_has_no_server_errors_and_keeps_its_schema(embedded: HubbubServer) -> None:
    token = embedded.make_user("fuzzer")
    embedded.make_user("other")
    # Something for the generated requests to hit: a room the fuzzer owns and a message in it.
    assert embedded.post("/api/rooms", {"name": "mine", "private": True}, token=token).status_code == 201
    embedded.post("/api/rooms/mine/messages", {"message": "hello"}, token=token)

    schema = schemathesis.openapi.from_url(embedded.http + "/api/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    start = time.monotonic()
    callers = {"bearer": {"Authorization": f"Bearer {token}"}, "anonymous": {}}
    for operation in operations:
        for headers in callers.values():
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                run_operation(operation, mode, embedded.http, headers, statuses, failures)
    elapsed = time.monotonic() - start
    total = sum(statuses.values())
    print(f"\nschemathesis: {total} requests over {len(operations)} operations in {elapsed:.0f} s; "
          f"statuses {dict(sorted(statuses.items()))}")
    assert httpx.get(embedded.http + "/livez", timeout=5).status_code == 200
    assert not any(code >= 500 for code in statuses), statuses
    assert not failures, f"{len(failures)} failing cases:\n" + "\n".join(failures[:40])
    assert total >= len(operations) * 2 * 2 * 5  # the run really generated requests
