"""One smoke test on the real default model (SmolLM2-135M-Instruct, bf16): chat, a tool round trip, JSON."""
from __future__ import annotations

import json

import jsonschema
import pytest

from engine import EngineConfig
from services.settings import ServerSettings
from tests.services.conftest import running_server

WEATHER = {"type": "object", "properties": {"city": {"type": "string"},
                                            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                           "parameters": WEATHER}}]


@pytest.mark.slow
def test_smollm2_chat_tools_and_json():
    with running_server(ServerSettings(engine=EngineConfig(kv_cache_memory=256 << 20))) as server, server.client() as client:
        model = client.models.list().data[0].id
        r = client.chat.completions.create(model=model, temperature=0, max_tokens=20, messages=[
            {"role": "user", "content": "What is the capital of France?"}])
        assert "Paris" in r.choices[0].message.content

        ask = [{"role": "user", "content": "What's the weather like in Paris today?"}]
        r = client.chat.completions.create(model=model, messages=ask, tools=TOOLS, temperature=0, max_tokens=80,
                                           tool_choice={"type": "function", "function": {"name": "get_weather"}})
        (call,) = r.choices[0].message.tool_calls
        arguments = json.loads(call.function.arguments)
        jsonschema.validate(arguments, WEATHER)
        assert arguments["city"] == "Paris"

        follow_up = ask + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                           {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 22}'}]
        r = client.chat.completions.create(model=model, messages=follow_up, tools=TOOLS, temperature=0,
                                           max_tokens=30)
        assert r.choices[0].finish_reason in ("stop", "length") and r.choices[0].message.content

        r = client.chat.completions.create(model=model, temperature=0, max_tokens=80,
                                           response_format={"type": "json_object"}, messages=[
                {"role": "user", "content": "Give me a JSON object describing a cat with a name and an age."}])
        assert r.choices[0].finish_reason == "stop"
        assert isinstance(json.loads(r.choices[0].message.content), dict)
        server.wait_idle()
