"""LoRA adapters on the HTTP surface: `model` naming an adapter on every generating route,
POST /v1/load_lora_adapter and /v1/unload_lora_adapter (fenced to --lora-dir, operator key only),
/v1/models listing them. The adapters are tiny random PEFT ones made here with `peft`."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil

import pytest
import torch
import websockets

from livecast.engine import SamplingParams
from livecast.services.errors import APIError
from livecast.services.llm.config import LLMConfig
from livecast.services.llm.cot import CotSpec, run_cot
from livecast.services.llm.cot.serving import Completion
from tests.conformance import openapi
from tests.services.conftest import running_server, tiny_settings

OPERATOR, TENANT = "sk-operator-key", "sk-tenant-key"  # projects `default` and `proj_t`
ALL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MESSAGES = [{"role": "user", "content": "Tell me a story."}]
PROMPT = "Once upon a time"


def make_adapter(base_path, out, *, r=4, targets=ALL_TARGETS, seed=1):
    """A PEFT adapter of the tiny Llama, saved as PEFT saves it. peft initialises lora_B to zero
    (a no-op adapter); both factors are drawn here so the update is as large as the base weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=r, target_modules=list(targets)))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.4)
                p.copy_(p.bfloat16().float())  # bfloat16 values: the engine keeps adapters in bfloat16
    peft_model.save_pretrained(out)
    return out


def hf_merged_greedy(base_path, adapter_path, prompt_ids: list[int], num_tokens: int) -> list[int]:
    """Greedy tokens of HF transformers with the adapter merged into the base: the reference."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter_path).merge_and_unload().eval()
    with torch.no_grad():
        out = merged.generate(torch.tensor([prompt_ids]), max_new_tokens=num_tokens, min_new_tokens=num_tokens,
                              do_sample=False, pad_token_id=2)
    return out[0, len(prompt_ids):].tolist()


@pytest.fixture(scope="module")
def adapters(tiny_llama_path, tmp_path_factory):
    """--lora-dir with adapters `a` (loaded at start) and `b`, and a folder outside it."""
    root = tmp_path_factory.mktemp("lora-dir")
    make_adapter(tiny_llama_path, root / "a", seed=1)
    make_adapter(tiny_llama_path, root / "b", seed=2, targets=["q_proj", "v_proj", "down_proj"])
    outside = make_adapter(tiny_llama_path, tmp_path_factory.mktemp("elsewhere") / "c", seed=3)
    return {"dir": root, "a": root / "a", "b": root / "b", "outside": outside}


@pytest.fixture(scope="module")
def server(tiny_llama_path, adapters, tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(f"{OPERATOR} default\n{TENANT} proj_t\n")
    settings = tiny_settings(tiny_llama_path, engine={"lora_modules": f"a={adapters['a']}"}, api_keys=str(keys))
    settings = dataclasses.replace(settings, llm=LLMConfig(served_model_name="tiny", lora_dir=str(adapters["dir"])))
    with running_server(settings) as s:
        yield s


@pytest.fixture(scope="module")
def http(server):
    with server.http(headers={"Authorization": f"Bearer {OPERATOR}"}) as c:
        yield c


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def _model_ids(http) -> list[str]:
    return [m["id"] for m in http.get("/v1/models").json()["data"]]


def _load(http, name: str, path, key: str = OPERATOR):
    return http.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)},
                     headers={"Authorization": f"Bearer {key}"})


def _chat(http, model: str, max_tokens: int = 12) -> dict:
    r = http.post("/v1/chat/completions", json={"model": model, "messages": MESSAGES, "max_tokens": max_tokens,
                                               "temperature": 0, "ignore_eos": True})
    assert r.status_code == 200, r.text
    return r.json()


def _complete(http, model: str, max_tokens: int = 12) -> dict:
    r = http.post("/v1/completions", json={"model": model, "prompt": PROMPT, "max_tokens": max_tokens,
                                          "temperature": 0, "ignore_eos": True})
    assert r.status_code == 200, r.text
    return r.json()


# -- --lora-modules, /v1/models ----------------------------------------------------------------------------
def test_lora_modules_are_served_at_start(http, adapters):
    cards = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
    assert list(cards)[0] == "tiny" and "parent" not in cards["tiny"]
    a = cards["a"]
    assert a["object"] == "model" and a["parent"] == "tiny" and a["owned_by"] == "livecast"
    assert a["root"] == os.path.realpath(adapters["a"]) and isinstance(a["created"], int)
    assert http.get("/v1/models/a").json() == a
    assert http.get("/v1/models/tiny").json()["id"] == "tiny"
    # vLLM's extra keys still conform to OpenAI's document (its Model allows more properties)
    assert openapi.errors(openapi.response_schema("GET", "/v1/models", 200), http.get("/v1/models").json()) == []
    assert openapi.errors(openapi.response_schema("GET", "/v1/models/a", 200), a) == []


# -- the adapter changes generation, on every route, and is echoed -----------------------------------------
def test_chat_and_completions_on_an_adapter_differ_from_the_base_and_echo_it(http):
    base, tuned = _chat(http, "tiny"), _chat(http, "a")
    assert base["model"] == "tiny" and tuned["model"] == "a"
    assert tuned["choices"][0]["message"]["content"] != base["choices"][0]["message"]["content"]
    assert _chat(http, "a")["choices"][0]["message"] == tuned["choices"][0]["message"]  # greedy: repeatable
    base, tuned = _complete(http, "tiny"), _complete(http, "a")
    assert base["model"] == "tiny" and tuned["model"] == "a"
    assert tuned["choices"][0]["text"] != base["choices"][0]["text"]
    # no model at all is the base
    r = http.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 12, "temperature": 0, "ignore_eos": True})
    assert r.json()["model"] == "tiny" and r.json()["choices"][0]["text"] == base["choices"][0]["text"]


def test_streamed_chunks_echo_the_adapter_and_add_up_to_the_answer(http):
    whole = _chat(http, "a")["choices"][0]["message"]["content"]
    with http.stream("POST", "/v1/chat/completions", json={"model": "a", "messages": MESSAGES, "max_tokens": 12,
                                                           "temperature": 0, "ignore_eos": True,
                                                           "stream": True}) as r:
        chunks = [json.loads(line[5:]) for line in r.iter_lines() if line.startswith("data:") and "[DONE]" not in line]
    assert chunks and {c["model"] for c in chunks} == {"a"}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == whole


def test_tgi_adapter_id_gives_the_merged_models_greedy_tokens(http, tiny_llama_path, adapters):
    """Two adapters loaded: `b` must run b, not a and not the base (HF transformers + peft, merged)."""
    assert _load(http, "b", adapters["b"]).status_code == 200
    try:
        prompt_ids = http.post("/tokenize", json={"prompt": PROMPT}).json()["tokens"]
        got = {}
        for adapter in (None, "a", "b"):
            r = http.post("/generate", json={"inputs": PROMPT, "parameters": {
                "max_new_tokens": 8, "details": True, "adapter_id": adapter, "stop": []}})
            assert r.status_code == 200, r.text
            got[adapter] = [t["id"] for t in r.json()["details"]["tokens"]]
        assert got["b"] == hf_merged_greedy(tiny_llama_path, adapters["b"], prompt_ids, len(got["b"]))
        assert len({tuple(v) for v in got.values()}) == 3
        assert _error(http.post("/generate", json={"inputs": PROMPT, "parameters": {"adapter_id": "zzz"}}),
                      404)["code"] == "model_not_found"
    finally:
        http.post("/v1/unload_lora_adapter", json={"lora_name": "b"})


def test_responses_assistants_and_the_websocket_take_the_adapter(http, server):
    chat = _chat(http, "a", max_tokens=8)["choices"][0]["message"]["content"]
    r = http.post("/v1/responses", json={"model": "a", "input": MESSAGES[0]["content"], "max_output_tokens": 8,
                                        "temperature": 0, "store": False})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "a" and r.json()["output"][0]["content"][0]["text"] == chat
    assistant = http.post("/v1/assistants", json={"model": "a", "name": "tuned"})
    assert assistant.status_code == 200 and assistant.json()["model"] == "a"

    async def ws_text(model: str) -> str:
        async with websockets.connect(f"{server.ws_url}/v1/ws/generate",
                                      additional_headers={"Authorization": f"Bearer {OPERATOR}"}) as ws:
            await ws.send(json.dumps({"type": "generate", "id": 1, "model": model, "messages": MESSAGES,
                                      "max_tokens": 8, "temperature": 0, "ignore_eos": True}))
            text = ""
            while (m := json.loads(await asyncio.wait_for(ws.recv(), 30)))["type"] == "delta":
                text += m["text"]
            assert m["type"] == "done", m
            return text

    assert asyncio.run(ws_text("a")) == chat != asyncio.run(ws_text("tiny"))


def _sse(response) -> list[tuple[str, dict]]:
    events, name = [], None
    for line in response.iter_lines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:") and "[DONE]" not in line:
            events.append((name, json.loads(line[5:])))
    return events


def test_assistant_runs_take_the_assistants_adapter_or_the_runs_model(http, adapters):
    assistant = http.post("/v1/assistants", json={"model": "a"}).json()
    for model, expected in ((None, "a"), ("tiny", "tiny")):
        body = {"assistant_id": assistant["id"], "thread": {"messages": MESSAGES}, "stream": True,
                "max_completion_tokens": 4, "temperature": 0, **({"model": model} if model else {})}
        with http.stream("POST", "/v1/threads/runs", json=body) as r:
            assert r.status_code == 200
            events = _sse(r)
        name, run = next((n, d) for n, d in reversed(events) if (n or "").startswith("thread.run.")
                         and d.get("object") == "thread.run")
        assert run["model"] == expected and run["status"] in ("completed", "incomplete"), (name, run)
    # an assistant on an adapter unloaded since: its runs are 404 model_not_found
    assert _load(http, "b", adapters["b"]).status_code == 200
    orphan = http.post("/v1/assistants", json={"model": "b"}).json()
    assert orphan["model"] == "b"
    http.post("/v1/unload_lora_adapter", json={"lora_name": "b"})
    r = http.post("/v1/threads/runs", json={"assistant_id": orphan["id"], "thread": {"messages": MESSAGES}})
    assert _error(r, 404)["code"] == "model_not_found"


def test_cot_runs_every_stage_on_the_adapter(http):
    seen = []

    async def generate(prompt, params):
        seen.append(params.lora)
        return [Completion(i, "so it is 4. The answer is 4.", [5]) for i in range(params.n)]

    result = asyncio.run(run_cot(generate, CotSpec("zero_shot"), "2+2?",
                                 params=SamplingParams(temperature=0, max_tokens=8, lora="a"), chat=True))
    assert result.answer == "4" and seen == ["a", "a"]  # the rationale, then Kojima's answer stage
    r = http.post("/v1/chat/completions", json={"model": "a", "messages": MESSAGES, "max_tokens": 8,
                                               "cot": {"mode": "zero_shot"}})
    assert r.status_code == 200 and r.json()["model"] == "a", r.text


def test_unknown_model_is_404_model_not_found_on_every_route(http, server):
    bodies = {"/v1/chat/completions": {"model": "nope", "messages": MESSAGES},
              "/v1/completions": {"model": "nope", "prompt": PROMPT},
              "/v1/responses": {"model": "nope", "input": "hi"},
              "/v1/responses/input_tokens": {"model": "nope", "input": "hi"},
              "/v1/assistants": {"model": "nope"},
              "/tokenize": {"model": "nope", "prompt": "hi"}}
    for path, body in bodies.items():
        error = _error(http.post(path, json=body), 404)
        assert error["code"] == "model_not_found" and error["param"] == "model" and "nope" in error["message"], path
    assert _error(http.get("/v1/models/nope"), 404)["code"] == "model_not_found"

    async def ws_error() -> dict:
        async with websockets.connect(f"{server.ws_url}/v1/ws/generate",
                                      additional_headers={"Authorization": f"Bearer {OPERATOR}"}) as ws:
            await ws.send(json.dumps({"type": "generate", "id": "x", "model": "nope", "prompt": "hi"}))
            return json.loads(await asyncio.wait_for(ws.recv(), 30))

    error = asyncio.run(ws_error())
    assert error["type"] == "error" and error["id"] == "x" and error["code"] == "model_not_found"


# -- load / unload ----------------------------------------------------------------------------------------
def test_load_then_unload(http, adapters):
    r = _load(http, "b", adapters["b"])
    assert r.status_code == 200 and r.text == "Success: LoRA adapter 'b' added successfully."
    assert r.headers["content-type"].startswith("text/plain")
    card = http.get("/v1/models/b").json()
    assert card["parent"] == "tiny" and card["root"] == os.path.realpath(adapters["b"])
    assert _chat(http, "b")["model"] == "b"
    error = _error(_load(http, "b", adapters["b"]), 400)  # already loaded
    assert error["param"] == "lora_name" and "already" in error["message"]
    assert _error(_load(http, "tiny", adapters["b"]), 400)["param"] == "lora_name"  # the base's name

    r = http.post("/v1/unload_lora_adapter", json={"lora_name": "b", "lora_int_id": 7})
    assert r.status_code == 200 and r.text == "Success: LoRA adapter 'b' removed successfully."
    assert "b" not in _model_ids(http)
    for response in (http.post("/v1/chat/completions", json={"model": "b", "messages": MESSAGES}),
                     http.get("/v1/models/b"),
                     http.post("/v1/unload_lora_adapter", json={"lora_name": "b"})):
        assert _error(response, 404)["code"] == "model_not_found"
    assert _load(http, "b", "b").status_code == 200  # a relative path is inside --lora-dir
    http.post("/v1/unload_lora_adapter", json={"lora_name": "b"})


def test_a_request_racing_an_unload_is_404(http, server, adapters):
    """The route resolved the adapter, then it was unloaded before the engine saw the request."""
    assert _load(http, "b", adapters["b"]).status_code == 200
    lora = server.llm.resolve_model("b")
    assert http.post("/v1/unload_lora_adapter", json={"lora_name": "b"}).status_code == 200

    async def open_stream():
        stream = await server.llm.open_stream(PROMPT, SamplingParams(max_tokens=4, lora=lora), "race")
        await stream.aclose()

    with pytest.raises(APIError) as err:
        asyncio.run(open_stream())
    assert err.value.status == 404 and err.value.code == "model_not_found"


def test_paths_outside_lora_dir_are_403(http, adapters, server):
    before = _model_ids(http)
    link = adapters["dir"] / "sneaky"
    link.symlink_to(adapters["outside"], target_is_directory=True)
    try:
        for path in (adapters["outside"], adapters["dir"] / ".." / adapters["outside"].parent.name / "c", link,
                     "/etc"):
            error = _error(_load(http, "c", path), 403)
            assert error["type"] == "permission_error" and error["param"] == "lora_path", path
    finally:
        link.unlink()
    lora_dir, server.llm.lora_dir = server.llm.lora_dir, None  # as a server started without --lora-dir
    try:
        error = _error(_load(http, "b", adapters["b"]), 403)
        assert error["type"] == "permission_error" and "--lora-dir" in error["message"]
    finally:
        server.llm.lora_dir = lora_dir
    assert _model_ids(http) == before


def test_only_the_operator_key_loads_but_every_project_uses_adapters(http, adapters):
    error = _error(_load(http, "b", adapters["b"], key=TENANT), 403)
    assert error["type"] == "permission_error" and "proj_t" in error["message"]
    error = _error(http.post("/v1/unload_lora_adapter", json={"lora_name": "a"},
                             headers={"Authorization": f"Bearer {TENANT}"}), 403)
    assert error["type"] == "permission_error"
    assert _error(_load(http, "b", adapters["b"], key="sk-wrong-key"), 401)["code"] == "invalid_api_key"
    r = http.post("/v1/chat/completions", json={"model": "a", "messages": MESSAGES, "max_tokens": 2},
                  headers={"Authorization": f"Bearer {TENANT}"})
    assert r.status_code == 200 and r.json()["model"] == "a"
    assert "b" not in _model_ids(http)


def _rewrite_config(folder, **changes):
    path = folder / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _drop_tensor(folder, fragment: str) -> str:
    from safetensors.torch import load_file, save_file

    path = folder / "adapter_model.safetensors"
    tensors = load_file(path)
    dropped = next(k for k in sorted(tensors) if fragment in k)
    del tensors[dropped]
    save_file(tensors, path)
    return dropped


def test_malformed_adapters_are_400_naming_the_fault_and_change_nothing(http, adapters, tiny_llama_path):
    root = adapters["dir"]
    shutil.copytree(adapters["b"], root / "wrong-rank")
    _rewrite_config(root / "wrong-rank", r=8, lora_alpha=8)
    shutil.copytree(adapters["b"], root / "missing")
    _drop_tensor(root / "missing", "layers.1.self_attn.v_proj.lora_B")
    make_adapter(tiny_llama_path, root / "embed", targets=["embed_tokens"])
    before = http.get("/v1/models").json()["data"]
    a_before = _chat(http, "a")["choices"][0]["message"]["content"]
    cases = {"wrong-rank": ("rank 8", "lora_A"), "missing": ("layers.1.self_attn.v_proj", "lora_B"),
             "embed": ("embed_tokens",), "nowhere": ("does not exist",)}
    for folder, words in cases.items():
        error = _error(_load(http, f"bad-{folder}", root / folder), 400)
        assert error["param"] == "lora_path" and "bad-" + folder in error["message"], error
        for word in words:
            assert word in error["message"], (folder, error["message"])
    assert _error(_load(http, "", root / "b"), 400)["param"] == "lora_name"  # an empty name
    assert _error(_load(http, "nul", f"{root}/b\0"), 400)["param"] == "lora_path"
    assert http.get("/v1/models").json()["data"] == before
    assert _chat(http, "a")["choices"][0]["message"]["content"] == a_before


def test_an_adapter_named_like_the_base_stops_startup(tiny_llama_path, adapters):
    from prometheus_client import CollectorRegistry

    from livecast.engine import EngineConfig
    from livecast.services.llm.service import llm_service

    async def start():
        config = EngineConfig(model=str(tiny_llama_path), dtype="float32", kv_cache_memory=16 << 20,
                              lora_modules=f"tiny={adapters['a']}")
        async with llm_service(config, LLMConfig(served_model_name="tiny"), CollectorRegistry()):
            pass

    with pytest.raises(ValueError, match="'tiny' has the served model's name"):
        asyncio.run(start())
