"""The API key guards every route of the app, every method, HTTP and WebSocket, except the one
allow-list (services.auth.OPEN_PATHS and the pages). The routes are enumerated from the app with
every room on, so a route added later is covered without being named here."""
from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from starlette.routing import WebSocketRoute
from starlette.testclient import WebSocketDenialResponse

from livecast.services.app import create_app
from livecast.services.auth import OPEN_PATHS
from livecast.services.settings import ServerSettings

KEY = "sk-guard"
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


@pytest.fixture(scope="module")
def client():
    # no lifespan: nothing loads, and a refused request never reaches a route that would need it
    app = create_app(ServerSettings(api_key=KEY))
    assert app.state.settings.enable_llm and app.state.settings.enable_diffusion and app.state.settings.enable_agents
    return TestClient(app, raise_server_exceptions=False)


def _routes(routes):
    """The app's routes, flat: newer FastAPI keeps each included router as one node."""
    for route in routes:
        nested = getattr(route, "original_router", None)  # no prefixes here: paths are absolute
        yield from _routes(nested.routes) if nested is not None else (route,)


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", path)


def test_every_route_every_method_needs_the_key(client):
    http_paths, ws_paths = [], []
    for route in _routes(client.app.routes):
        (ws_paths if isinstance(route, WebSocketRoute) else http_paths).append(route.path)
    # the rooms' routes are all here, the ones the finding named among them
    assert {"/v1/files", "/v1/files/{file_id}/content", "/v1/vector_stores", "/v1/embeddings",
            "/v1/chat/completions", "/docs", "/redoc", "/openapi.json"} <= set(http_paths)
    assert len(http_paths) > 60 and ws_paths
    for path in http_paths:
        if path in OPEN_PATHS:
            continue
        for method in METHODS:
            for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": KEY}):
                r = client.request(method, _concrete(path), headers=headers)
                assert r.status_code == 401, (method, path, headers, r.status_code)
                if method != "HEAD":
                    assert r.json()["error"]["code"] == "invalid_api_key"
    for path in ws_paths:
        for query in ("", "?api_key=sk-wrong"):
            with pytest.raises(WebSocketDenialResponse) as denial:
                with client.websocket_connect(_concrete(path) + query):
                    pass
            assert denial.value.status_code == 401, path


def test_the_allow_list_is_open_and_the_key_opens_the_rest(client):
    for path in OPEN_PATHS:
        assert client.get(path).status_code != 401, path
    for page in ("/", "/chat.html", "/css/style.css", "/js/common.js"):
        assert client.get(page).status_code == 200, page
    assert client.get("/no-such-page.html").status_code == 404  # a page that is not there, not a 401
    assert client.get("/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    # past the guard: the route runs (its room is not started here, so it answers 503, not 401)
    assert client.get("/v1/files", headers={"Authorization": f"Bearer {KEY}"}).status_code not in (401, 404)


def test_no_key_configured_opens_everything():
    client = TestClient(create_app(ServerSettings()), raise_server_exceptions=False)
    assert client.get("/openapi.json").status_code == 200
