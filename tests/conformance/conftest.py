"""One live server for the conformance suite (tiny random Llama, the sandbox, retrieval with the
packaged MiniLM), and `api`: an HTTP client that checks every body and every SSE event it gets on
an OpenAI route against OpenAI's document, strictly (tests/conformance/openapi.py).

Each check is tallied; the session ends by printing how many conformed."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import httpx
import pytest

from livecast.services.agents.config import AgentsConfig
from livecast.services.retrieval.config import RetrievalConfig
from livecast.services.sandbox.config import SandboxConfig
from tests.conformance import openapi
from tests.services.conftest import running_server, tiny_settings


@dataclass
class Tally:
    checked: int = 0
    failures: list[str] = field(default_factory=list)
    routes: set[tuple[str, str]] = field(default_factory=set)  # (method, the document's template) answered 2xx


TALLY = Tally()
# CONFORMANCE_SOFT=1 counts departures without failing on them (to measure a tree before fixing it)
SOFT = os.environ.get("CONFORMANCE_SOFT") == "1"


def pytest_terminal_summary(terminalreporter):
    if TALLY.checked:
        conforming = TALLY.checked - len(TALLY.failures)
        terminalreporter.write_line(f"OpenAI {openapi.SPEC_VERSION} conformance: "
                                    f"{conforming} of {TALLY.checked} bodies and events conform")


class NonConforming(AssertionError):
    pass


def check(schema: dict, instance, what: str) -> None:
    TALLY.checked += 1
    found = openapi.errors(schema, instance)
    if found:
        TALLY.failures.append(what)
        if SOFT:
            print(f"NONCONFORMING {what}: {found[:3]}")
            return
        raise NonConforming(f"{what} departs from OpenAI's document:\n  " + "\n  ".join(found[:12]))


def sse(lines) -> list[tuple[str | None, str]]:
    """(event name, data) of each event of a text/event-stream."""
    events, name, data = [], None, []
    for line in lines:
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line and data:
            events.append((name, "\n".join(data)))
            name, data = None, []
    if data:
        events.append((name, "\n".join(data)))
    return events


class Api:
    """httpx against the live server; every JSON answer on an OpenAI route is checked against the
    document's schema for its route and status, and every request body against the route's."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http

    def _check_request(self, method: str, path: str, body) -> None:
        if body is not None:
            check(openapi.request_schema(method, path), body, f"request {method} {path}")

    def call(self, method: str, path: str, body=None, *, status: int = 200, below_floor: tuple[str, ...] = (),
             as_documented=None, **kwargs) -> dict:
        """`below_floor`: token limits this request sets under the document's minimum, which livecast
        serves (docs/API.md): the request is sent unchecked and the answer is checked with their
        echoed values read as unset. `as_documented`: the answer as the document would type it,
        for a deliberate difference docs/API.md names (a stored chat completion's message roles)."""
        if body is not None and not below_floor:
            self._check_request(method, path, body)
        r = self.http.request(method, path, json=body, **kwargs)
        assert r.status_code == status, f"{method} {path}: {r.status_code} {r.text[:500]}"
        if status < 400:
            TALLY.routes.add((method, openapi.route_of(method, path)["template"]))
        if status >= 400:
            error = r.json()["error"]  # OpenAI's error shape on every 4xx
            assert set(error) >= {"message", "type", "param", "code"}, error
            return error
        if not r.headers.get("content-type", "").startswith("application/json"):
            return r
        payload = r.json()
        try:
            schema = openapi.response_schema(method, path, status)
        except KeyError:  # the document gives this answer no body (DELETE a response): see docs/API.md
            return payload
        documented = as_documented(payload) if as_documented else payload
        check(schema, {**documented, **dict.fromkeys(below_floor)}, f"{method} {path} {status}")
        return payload

    def get(self, path: str, **kwargs):
        return self.call("GET", path, **kwargs)

    def post(self, path: str, body=None, **kwargs):
        return self.call("POST", path, body, **kwargs)

    def delete(self, path: str, **kwargs):
        return self.call("DELETE", path, **kwargs)

    def upload(self, path: str, files: dict, data: dict | None = None) -> dict:
        r = self.http.post(path, files=files, data=data or {})
        assert r.status_code == 200, r.text[:500]
        TALLY.routes.add(("POST", openapi.route_of("POST", path)["template"]))
        payload = r.json()
        check(openapi.response_schema("POST", path, 200), payload, f"POST {path} 200")
        return payload

    def stream(self, path: str, body: dict, *, schema: dict | None = None) -> list[dict]:
        """POST with stream: true; each event's JSON (a run's named events as {event, data})."""
        self._check_request("POST", path, body)
        schema = schema or openapi.response_schema("POST", path, 200, "text/event-stream")
        out = []
        with self.http.stream("POST", path, json=body) as r:
            assert r.status_code == 200, r.read()[:500]
            assert r.headers["content-type"].startswith("text/event-stream")
            TALLY.routes.add(("POST", openapi.route_of("POST", path)["template"]))
            for name, data in sse(r.iter_lines()):
                if data == "[DONE]":
                    continue
                event = json.loads(data) if data.startswith(("{", "[")) else data
                if name is not None:  # Assistants: the event name travels beside the data
                    event = {"event": name, "data": event}
                check(schema, event, f"event {name or event.get('type') or event.get('object')} of POST {path}")
                out.append(event)
        return out


def pytest_collection_modifyitems(items):
    """The route-coverage check runs after every other test of the suite."""
    last = [i for i in items if i.originalname == "test_every_served_openai_route_was_checked"]
    items[:] = [i for i in items if i not in last] + last


@pytest.fixture(scope="package")
def server(tiny_llama_path, tmp_path_factory):
    settings = tiny_settings(tiny_llama_path, agents=AgentsConfig(data_dir=str(tmp_path_factory.mktemp("oa"))),
                             retrieval=RetrievalConfig(), sandbox=SandboxConfig(spares=0, unsafe=True))
    with running_server(settings) as s:
        yield s


@pytest.fixture(scope="package")
def api(server):
    with httpx.Client(base_url=server.url, timeout=300) as http:  # generous: a loaded machine, yet bounded
        yield Api(http)
