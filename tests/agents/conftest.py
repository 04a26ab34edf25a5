"""One tiny-model server per test module, with the agents room on and its store in a temp dir."""
from __future__ import annotations

import pytest

from livecast.services.agents.config import AgentsConfig
from tests.services.conftest import running_server, tiny_settings


def agents_settings(path, data_dir, **agents):
    return tiny_settings(path, agents=AgentsConfig(data_dir=str(data_dir), **agents))


@pytest.fixture(scope="module")
def server(tiny_llama_path, tmp_path_factory):
    with running_server(agents_settings(tiny_llama_path, tmp_path_factory.mktemp("agents-store"))) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


class PromptRecorder:
    """Wraps the live LLMService's `open_stream` to keep each prompt the engine was given (decoded)."""

    def __init__(self, llm) -> None:
        self.llm, self.prompts = llm, []
        self._open = llm.open_stream

    async def __call__(self, prompt, params, request_id):
        self.prompts.append(self.llm.tokenizer.decode(prompt) if isinstance(prompt, list) else prompt)
        return await self._open(prompt, params, request_id)


@pytest.fixture
def prompts(server):
    recorder = PromptRecorder(server.llm)
    server.llm.open_stream = recorder
    yield recorder.prompts
    del server.llm.open_stream  # back to the class's method


WEATHER = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]},
                                            "days": {"type": "integer", "minimum": 1, "maximum": 7}},
           "required": ["city", "days"], "additionalProperties": False}
# a closed grammar: the tiny random model must finish (status completed) instead of hitting the token cap
ANSWER = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no", "maybe"]}},
          "required": ["answer"], "additionalProperties": False}


# -- the store's two backends --------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    """An empty store on each backend: a SQLite file under tmp_path, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'livecast.db'}"
    return request.getfixturevalue("postgres").new_database()
