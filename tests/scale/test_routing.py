"""The pure router: request keys, ring placement, bounded load, pins, pools. No Ray, no servers."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter, OrderedDict
from pathlib import Path

import pytest

from livecast.services.scale.routing import MAX_PARSED_BODY_BYTES, Replica, RouteKey, Router, route_key

ROOT = Path(__file__).resolve().parents[2]


def llm(rid: str, load: int = 0) -> Replica:
    return Replica(rid, "llm", f"http://127.0.0.1/{rid}", 100, "cpu", load)


def media(rid: str, load: int = 0) -> Replica:
    return Replica(rid, "media", f"http://127.0.0.1/{rid}", 200, "cpu", load)


def chat(system: str, user: str) -> bytes:
    return json.dumps({"model": "tiny", "messages": [{"role": "system", "content": system},
                                                     {"role": "user", "content": user}]}).encode()


def first(router: Router, key: RouteKey) -> str:
    return router.candidates(key)[0].id


def owners(router: Router, keys: list[str]) -> list[str]:
    return [first(router, RouteKey("llm", k, ())) for k in keys]


KEYS = [f"system prompt number {i} " * 8 for i in range(3000)]

_PLACEMENT_SCRIPT = """
import json, sys
from livecast.services.scale.routing import Replica, RouteKey, Router
r = Router()
r.update([Replica(f"r{i}", "llm", "", 1, "cpu", 0) for i in range(4)])
print(json.dumps([r.candidates(RouteKey("llm", f"system prompt number {i} " * 8, ()))[0].id for i in range(200)]))
"""


def test_placement_is_the_same_in_every_process():
    router = Router()
    router.update([llm(f"r{i}") for i in range(4)])
    here = owners(router, KEYS[:200])
    assert owners(router, KEYS[:200]) == here  # stable across calls
    assert len(set(here)) == 4
    for seed in ("1", "12345"):  # Python's str hash is salted per process; the ring must not be
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        out = subprocess.run([sys.executable, "-c", _PLACEMENT_SCRIPT], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=60, check=True)
        assert json.loads(out.stdout) == here


def test_adding_or_removing_a_replica_moves_about_one_nth_of_keys():
    router = Router()
    four = [llm(f"r{i}") for i in range(4)]
    router.update(four)
    before = owners(router, KEYS)
    router.update(four + [llm("r4")])
    grown = owners(router, KEYS)
    moved = [(a, b) for a, b in zip(before, grown) if a != b]
    assert all(b == "r4" for _, b in moved)  # keys only move to the newcomer
    assert 0.12 < len(moved) / len(KEYS) < 0.28  # ~1/5
    router.update(four[:3])  # r3 dies
    shrunk = owners(router, KEYS)
    moved = [(a, b) for a, b in zip(before, shrunk) if a != b]
    assert {a for a, _ in moved} == {"r3"}  # only the dead replica's keys move
    assert 0.15 < len(moved) / len(KEYS) < 0.35  # ~1/4


def test_a_hot_prefix_spills_deterministically_to_the_next_replica():
    router = Router(load_slack=2)
    router.update([llm("a"), llm("b"), llm("c")])
    key = RouteKey("llm", KEYS[7], ())
    home = first(router, key)
    others = [r for r in "abc" if r != home]
    router.update([llm(r, load=5 if r == home else 0) for r in "abc"])
    spill = first(router, key)
    assert spill != home and first(router, key) == spill  # same spill target every time
    assert router.candidates(key)[-1].id == home  # the overloaded owner is the last fallback
    router.update([llm(r, load=2 if r == home else 0) for r in "abc"])  # within the slack: stays home
    assert first(router, key) == home
    # loads reported late: the ingress's own in-flight count spreads a burst
    router.update([llm(r) for r in "abc"])
    for _ in range(3):
        router.begin(home)
    assert first(router, key) in others
    router.end(home)
    assert first(router, key) == home


def test_pins_beat_prefix_and_die_with_their_replica():
    router = Router(sticky_capacity=2)
    router.update([llm("a"), llm("b")])
    prefix = KEYS[3]
    home = first(router, RouteKey("llm", prefix, ()))
    other = "b" if home == "a" else "a"
    router.pin("resp_1", other)
    assert first(router, RouteKey("llm", prefix, ("resp_1",))) == other
    assert first(router, RouteKey("llm", prefix, ("unknown", "resp_1"))) == other
    router.pin("conv_1", home)
    router.pin("conv_2", home)  # capacity 2: resp_1 was least recently used
    assert first(router, RouteKey("llm", prefix, ("resp_1",))) == home
    router.update([llm(other)])  # home dies: its pins go, requests fall back to the ring
    assert first(router, RouteKey("llm", prefix, ("conv_1",))) == other
    router.update([llm("a"), llm("b")])  # home comes back under the same id: the pin is not resurrected
    router.pin("resp_9", other)
    assert first(router, RouteKey("llm", prefix, ("conv_1",))) == home
    assert first(router, RouteKey("llm", prefix, ("resp_9",))) == other


def test_round_robin_rotates_and_no_prefix_goes_to_the_least_loaded():
    router = Router("round_robin")
    router.update([llm("a"), llm("b"), llm("c")])
    firsts = [first(router, RouteKey("llm", KEYS[0], ())) for _ in range(6)]
    assert firsts == ["a", "b", "c", "a", "b", "c"]
    prefixed = Router()
    prefixed.update([llm("a", 3), llm("b", 1), llm("c", 2)])
    assert [r.id for r in prefixed.candidates(RouteKey("llm", None, ()))] == ["b", "c", "a"]
    prefixed.update([llm("a"), llm("b"), llm("c")])  # ties are taken in turn, not always the same
    assert {first(prefixed, RouteKey("llm", None, ())) for _ in range(3)} == {"a", "b", "c"}


def test_pools_are_filtered():
    router = Router()
    router.update([llm("l1"), llm("l2"), media("m1")])
    assert {r.id for r in router.candidates(route_key("POST", "/v1/webrtc/offer", b"{}"))} == {"m1"}
    assert {r.id for r in router.candidates(route_key("POST", "/v1/chat/completions", chat("s", "u")))} == {"l1", "l2"}
    assert {r.id for r in router.candidates(route_key("GET", "/", None))} == {"l1", "l2", "m1"}
    router.pin("sess_1", "m1")  # a pin to a replica outside the pool is ignored
    assert {r.id for r in router.candidates(RouteKey("llm", None, ("sess_1",)))} == {"l1", "l2"}
    router.update([llm("l1")])
    assert router.candidates(route_key("GET", "/v1/webrtc/sessions", None)) == []
    with pytest.raises(ValueError, match="policy"):
        Router("random")


@pytest.mark.parametrize("path,pool", [
    ("/v1/chat/completions", "llm"), ("/v1/models", "llm"), ("/v1/models/tiny", "llm"),
    ("/v1/files/file_1/content", "llm"), ("/v1/vector_stores", "llm"), ("/v1/ws/generate", "llm"),
    ("/v1/images/generations", "media"), ("/v1/ws/frames", "media"), ("/v1/webrtc/offer", "media"),
    ("/v1/whip", "media"), ("/v1/whep/s_1", "media"), ("/v1/streams", "media"),
    ("/v1/filesystem", "any"), ("/health", "any"), ("/static/app.js", "any"),
])
def test_pool_by_path(path, pool):
    assert route_key("GET", path, None).pool == pool


def test_sticky_ids_from_paths_and_bodies():
    assert route_key("GET", "/v1/responses/resp_1/input_items", None).sticky == ("resp_1",)
    assert route_key("POST", "/v1/threads/thread_1/runs/run_1/cancel", b"").sticky == ("thread_1",)
    assert route_key("POST", "/v1/threads/runs", b"{}").sticky == ()
    assert route_key("DELETE", "/v1/webrtc/sessions/s_1", None).sticky == ("s_1",)
    # a WHIP stream, its WHEP viewers and its settings live with the media replica that took it
    for method, path in (("PATCH", "/v1/whip/w_1"), ("DELETE", "/v1/whip/w_1"), ("POST", "/v1/whep/w_1"),
                         ("DELETE", "/v1/whep/w_1/v_2"), ("PATCH", "/v1/streams/w_1")):
        assert route_key(method, path, None).sticky == ("w_1",), path
    assert route_key("GET", "/v1/containers/cntr_1/files", None).sticky == ("cntr_1",)
    body = json.dumps({"input": "hi", "previous_response_id": "resp_2", "conversation": {"id": "conv_3"}})
    assert route_key("POST", "/v1/responses", body.encode()).sticky == ("resp_2", "conv_3")
    body = json.dumps({"input": "hi", "conversation": "conv_4"}).encode()
    assert route_key("POST", "/v1/responses", body).sticky == ("conv_4",)


def test_prompt_prefixes_put_the_shared_part_first():
    key = route_key("POST", "/v1/chat/completions", json.dumps({"messages": [
        {"role": "system", "content": [{"type": "text", "text": "You are "}, {"type": "text", "text": "terse."}]},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:x"}}, {"type": "text", "text": "hi"}]},
    ]}).encode())
    assert key.prefix.startswith("<system>You are terse.<user>[image_url:")
    assert key.prefix.endswith("hi")
    assert route_key("POST", "/v1/completions", b'{"prompt": [1, 2, 3]}').prefix == "1 2 3"
    assert route_key("POST", "/v1/completions", b'{"prompt": ["first", "second"]}').prefix == "first"
    assert route_key("POST", "/generate", b'{"inputs": "once upon"}').prefix == "once upon"
    key = route_key("POST", "/v1/responses", b'{"instructions": "Be brief.", "input": "hello"}')
    assert key.prefix == "<system>Be brief.hello"
    items = [{"role": "user", "content": [{"type": "input_text", "text": "hello"}]}]
    assert route_key("POST", "/v1/responses", json.dumps({"input": items}).encode()).prefix == "<user>hello"
    tools = {"tools": [{"type": "function", "function": {"name": "f"}}]}
    with_tools = route_key("POST", "/v1/chat/completions", json.dumps({**json.loads(chat("s", "u")), **tools}).encode())
    assert with_tools.prefix.startswith("[tools:") and with_tools.prefix.endswith("<system>s<user>u")
    assert route_key("GET", "/v1/models", None).prefix is None
    assert route_key("POST", "/tokenize", b'{"prompt": "x"}').prefix is None  # no KV cache involved


@pytest.mark.parametrize("body", [
    b"{not json", b"[1, 2]", b"\xff\xfe\x00", b"null", b"[" * 100_000 + b"]" * 100_000,
    b'{"messages": "nope"}', b'{"messages": [1, null, {"role": 5, "content": {"a": 1}}]}',
    b'{"prompt": {"x": 1}}', b'{"input": 7, "conversation": 3, "previous_response_id": []}',
    b'{"messages": [{"role": "user", "content": "\\ud800 lone surrogate"}]}',
    b'{"messages": [{"role": "user", "content": "' + b"x" * MAX_PARSED_BODY_BYTES + b'"}]}',
])
def test_malformed_or_huge_bodies_never_raise(body):
    router = Router()
    router.update([llm("a"), llm("b")])
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/responses"):
        key = route_key("POST", path, body)
        assert key.pool == "llm" and all(isinstance(s, str) for s in key.sticky)
        assert len(router.candidates(key)) == 2
        if len(body) > MAX_PARSED_BODY_BYTES:  # not parsed on the event loop at all
            assert key.prefix is None


def test_shared_system_prompts_with_different_user_turns_meet_on_one_replica():
    router = Router()
    router.update([llm(f"r{i}") for i in range(4)])
    for s in range(8):
        system = f"You are agent {s}. " + "Follow the house style guide carefully. " * 10
        placed = {first(router, route_key("POST", "/v1/chat/completions", chat(system, f"question {u}")))
                  for u in range(20)}
        assert len(placed) == 1, (s, placed)


def _simulate(policy: str, num_replicas: int, cache_prompts: int = 3, seed: int = 0) -> tuple[float, Counter]:
    """8 system prompts x 50 requests, 4 in flight at a time (each lasts 4 arrivals). Each replica
    keeps the KV of its `cache_prompts` most recently used system prompts (LRU): a hit is a request
    whose system prompt is still cached on the replica that served it."""
    rng = random.Random(seed)
    systems = [f"System prompt {s}: " + "You answer questions about the product catalogue. " * 8 for s in range(8)]
    workload = [(s, u) for s in range(8) for u in range(50)]
    rng.shuffle(workload)
    router = Router(policy)
    router.update([llm(f"r{i}") for i in range(num_replicas)])
    caches = {f"r{i}": OrderedDict() for i in range(num_replicas)}
    in_flight: list[str] = []
    hits, served = 0, Counter()
    for s, u in workload:
        if len(in_flight) == 4:
            router.end(in_flight.pop(0))
        rid = first(router, route_key("POST", "/v1/chat/completions", chat(systems[s], f"user question {u}")))
        router.begin(rid)
        in_flight.append(rid)
        served[rid] += 1
        cache = caches[rid]
        hits += s in cache
        cache[s] = True
        cache.move_to_end(s)
        if len(cache) > cache_prompts:
            cache.popitem(last=False)
    return hits / len(workload), served


@pytest.mark.parametrize("num_replicas", [2, 3, 4])
def test_prefix_routing_beats_round_robin_on_shared_system_prompts(num_replicas):
    prefix_rate, prefix_served = _simulate("prefix", num_replicas, cache_prompts=8 // num_replicas + 1)
    rr_rate, _ = _simulate("round_robin", num_replicas, cache_prompts=8 // num_replicas + 1)
    assert prefix_rate > 0.75 and prefix_rate > rr_rate + 0.2, (prefix_rate, rr_rate)
    assert len(prefix_served) == num_replicas  # every replica gets its share of the prompts


def test_bounded_load_holds_under_a_hot_prefix():
    """Half the traffic shares one system prompt, 12 requests in flight: every pick stays within
    `load_slack` of the least loaded replica, so the hot prompt spreads instead of queueing."""
    rng = random.Random(1)
    router = Router(load_slack=2)
    router.update([llm(f"r{i}") for i in range(3)])
    in_flight: list[str] = []
    served = Counter()
    for n in range(600):
        s = 0 if n % 2 else rng.randrange(1, 8)
        if len(in_flight) == 12:
            router.end(in_flight.pop(rng.randrange(12)))
        rid = first(router, route_key("POST", "/v1/chat/completions", chat(f"System {s}. " * 40, str(n))))
        assert router.load(rid) <= min(router.load(r) for r in ("r0", "r1", "r2")) + 2
        router.begin(rid)
        in_flight.append(rid)
        served[rid] += 1
    assert min(served.values()) > 600 / 3 * 0.5, served
