"""Every route the app serves that OpenAI's document has was answered (2xx) and checked by this
suite: a route added later without a conformance check fails here."""
from __future__ import annotations

import pytest

from tests.conformance import openapi
from tests.conformance.conftest import TALLY

MODULES = ("test_assistants_routes", "test_llm_routes", "test_open_responses", "test_request_bounds",
           "test_responses_routes", "test_storage_routes")


def test_every_served_openai_route_was_checked(server, request):
    ran = {item.module.__name__.rsplit(".", 1)[-1] for item in request.session.items}
    if not set(MODULES) <= ran:
        pytest.skip("only part of the conformance suite ran")
    served = set()
    for path, operations in server.app.openapi()["paths"].items():  # every route the app serves
        for method in operations:
            if not path.startswith("/v1/"):
                continue
            try:
                served.add((method.upper(), openapi.route_of(method, path.replace(":path", ""))["template"]))
            except KeyError:  # livecast's own route (e.g. /v1/webrtc/…): not in OpenAI's document
                continue
    assert served, "no served route is in the document"
    assert sorted(served - TALLY.routes) == []
