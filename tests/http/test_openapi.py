"""The HTTP API against its OpenAPI document (esdb_node/server/openapi.yaml): schemathesis
generates requests for every operation from the document, sends them to a real node, and
checks each answer: no server error, a status the document declares, the declared content
type and headers, and a body that matches the declared schema.

Run alone: `pytest tests/http/test_openapi.py`; more examples per operation with
`pytest tests/http/test_openapi.py --hypothesis-profile=long`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, settings

from esdb_node.client import Client
from esdb_node.model import EventData
from tests.harness import NodeProc, wait_for
from tests.http.support import base_url, request, with_http

SPEC = Path(str(resources.files("esdb_node.server").joinpath("openapi.yaml")))


# The document declares bearer auth: the node runs with a token, so schemathesis also checks
# that requests without it (or with a wrong one) are refused.
TOKEN = "openapi-test-token"


@pytest.fixture(scope="module")
def api_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProc]:
    node = NodeProc(tmp_path_factory.mktemp("openapi") / "n", ports=with_http, ESDB_TOKEN=TOKEN)
    node.start(wait=False)
    ready = base_url(node) + "/health/ready"
    wait_for(lambda: request(ready).status == 200, timeout=30, what="the node to be ready")
    with Client(node.url, token=TOKEN) as client:  # something to find besides the fuzzer's
        client.append("order-1", [EventData.from_json("OrderPlaced", {"n": i}) for i in range(3)])
    yield node
    node.stop()


@pytest.fixture(scope="module")
def api_schema(api_node: NodeProc) -> schemathesis.BaseSchema:
    return schemathesis.from_path(str(SPEC), base_url=base_url(api_node))


schema = schemathesis.from_pytest_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_the_node_answers_as_its_openapi_document_says(case: schemathesis.Case) -> None:
    # On the case itself (not `call(headers=...)`): the auth check then replays the case
    # without it and expects 401. The document declares no Accept header, so no case asks
    # for SSE (which never ends; test_api.py checks it).
    headers = case._get_headers()
    headers["Authorization"] = f"Bearer {TOKEN}"
    case.headers = headers
    response = case.call(timeout=15)
    case.validate_response(response)


def test_the_document_lists_every_route_the_node_serves() -> None:
    from esdb_node.server.http import HttpServer

    doc = yaml.safe_load(SPEC.read_text())
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    app_routes = HttpServer.route_table()
    served = {(method, re.sub(r"\{(\w+):[^}]+\}", r"{\1}", path)) for method, path in app_routes}
    assert served == documented
