"""Which replica serves a request: pools, prefix-affine consistent hashing with bounded load, pins.

Pure bookkeeping (no Ray, no I/O), owned by the ingress and called on its one event loop, so it
takes no locks: no method awaits. `route_key` reads a request once; `Router.candidates` orders
the live replicas of its pool, first choice first, the rest as fallbacks for retries.

Placement of an LLM request hashes the first `prefix_chars` characters of a canonical text of its
prompt onto a ring of `vnodes` virtual nodes per replica (blake2b, so every process agrees), then
walks the ring to the first replica whose load is within `load_slack` of the least loaded one:
requests that share a long system prompt meet on the replica whose KV cache holds it, and a hot
prefix spills to the next replica on the ring instead of queueing (consistent hashing with
bounded loads, Mirrokni et al. 2018). Adding or removing one of N replicas moves ~1/N of keys.

A few routes change state that every replica of the pool holds alike (LoRA adapters): their key
says `broadcast`, and the ingress sends them to all of `Router.members` (services.scale.broadcast).
"""
from __future__ import annotations

import hashlib
import json
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

POLICIES = ("prefix", "round_robin")
# POSTs that every LLM replica must receive: each holds the adapters in its own process
BROADCAST_PATHS = frozenset({"/v1/load_lora_adapter", "/v1/unload_lora_adapter"})
LLM_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/generate", "/generate_stream",
                       "/tokenize", "/detokenize", "/v1/models", "/v1/ws/generate", "/v1/embeddings"}) | BROADCAST_PATHS
LLM_FAMILIES = ("/v1/models", "/v1/responses", "/v1/conversations", "/v1/assistants", "/v1/threads",
                "/v1/files", "/v1/vector_stores", "/v1/containers", "/v1/cot")
MEDIA_FAMILIES = ("/v1/webrtc", "/v1/ws/frames", "/v1/images", "/v1/whip", "/v1/whep", "/v1/streams")
# families whose second path segment names state that lives in one replica's process
_PATH_ID_FAMILIES = ("responses", "conversations", "threads", "containers", "whip", "whep", "streams")
MAX_KEY_TEXT_CHARS = 8192       # route_key keeps this much canonical text; Router cuts further
MAX_PARSED_BODY_BYTES = 2 << 20  # larger bodies are not parsed on the event loop: least loaded


@dataclass(frozen=True, slots=True)
class Replica:
    id: str
    kind: str       # "llm" | "media"
    address: str    # http://127.0.0.1:port of the replica's own server
    pid: int
    device: str
    load: int       # requests in flight (LLM) or live sessions (media), as the replica reports


@dataclass(frozen=True, slots=True)
class RouteKey:
    pool: str                  # "llm" | "media" | "any"
    prefix: str | None         # text whose hash places an LLM request on the ring
    sticky: tuple[str, ...]    # ids that pin a request to their owner, strongest first
    broadcast: bool = False    # every live replica of the pool gets it (BROADCAST_PATHS)


def _in_family(path: str, families: tuple[str, ...]) -> bool:
    return any(path == f or path.startswith(f + "/") for f in families)


def pool_of(path: str) -> str:
    if path in LLM_PATHS or _in_family(path, LLM_FAMILIES):
        return "llm"
    if _in_family(path, MEDIA_FAMILIES):
        return "media"
    return "any"


def _path_ids(path: str) -> list[str]:
    parts = path.strip("/").split("/")  # ["v1", family, id, ...]
    if len(parts) >= 3 and parts[0] == "v1" and parts[1] in _PATH_ID_FAMILIES and parts[2] != "runs":
        return [parts[2]]
    if len(parts) >= 4 and parts[:3] == ["v1", "webrtc", "sessions"]:
        return [parts[3]]
    return []


def _digest(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def _content_text(content) -> str:
    """Text parts verbatim, in order; images and files by a digest of their reference."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return "" if content is None else _digest(content)
    out = []
    for part in content:
        if isinstance(part, str):
            out.append(part)
        elif isinstance(part, dict):
            text = part.get("text")
            out.append(text if isinstance(text, str) else f"[{part.get('type')}:{_digest(part)}]")
    return "".join(out)


def _messages_text(messages, out: list[str]) -> None:
    size = 0
    for m in messages if isinstance(messages, list) else []:
        if size > MAX_KEY_TEXT_CHARS:
            return
        if isinstance(m, str):  # Responses input may hold bare strings
            text = m
        elif isinstance(m, dict):
            calls = m.get("tool_calls")
            text = (f"<{m.get('role', m.get('type', ''))}>{_content_text(m.get('content'))}"
                    + (f"[calls:{_digest(calls)}]" if calls else ""))
        else:
            continue
        out.append(text)
        size += len(text)


def _prompt_text(body: dict, path: str) -> str | None:
    """The canonical text of a request's prompt, in the order the model reads it; None if none."""
    out: list[str] = []
    if path == "/v1/chat/completions":
        if body.get("tools"):  # chat templates render tools into the prompt's head
            out.append(f"[tools:{_digest(body['tools'])}]")
        _messages_text(body.get("messages"), out)
    elif path == "/v1/completions":
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]  # several prompts: the first places the request
        if isinstance(prompt, list):
            prompt = " ".join(str(t) for t in prompt[:MAX_KEY_TEXT_CHARS])
        out.append(prompt if isinstance(prompt, str) else "")
    elif path in ("/generate", "/generate_stream"):
        inputs = body.get("inputs")
        out.append(inputs if isinstance(inputs, str) else "")
    elif path == "/v1/responses":
        if isinstance(body.get("instructions"), str):
            out.append(f"<system>{body['instructions']}")
        if body.get("tools"):
            out.append(f"[tools:{_digest(body['tools'])}]")
        items = body.get("input")
        _messages_text([items] if isinstance(items, str) else items, out)
    text = "".join(out)
    return text[:MAX_KEY_TEXT_CHARS] if text else None


def _body_ids(body: dict) -> list[str]:
    ids = []
    for name in ("previous_response_id", "thread_id"):
        if isinstance(body.get(name), str):
            ids.append(body[name])
    conversation = body.get("conversation")
    if isinstance(conversation, dict):
        conversation = conversation.get("id")
    if isinstance(conversation, str):
        ids.append(conversation)
    return ids


def route_key(method: str, path: str, body: bytes | None) -> RouteKey:
    """Read a request's pool, prompt prefix and sticky ids. Never raises: a body that is not
    JSON, or too large to parse here, yields prefix None (the replica answers the 400)."""
    pool = pool_of(path)
    sticky = _path_ids(path)
    prefix = None
    if pool == "llm" and body and method.upper() in ("POST", "PUT", "PATCH") and len(body) <= MAX_PARSED_BODY_BYTES:
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError):
            parsed = None
        if isinstance(parsed, dict):
            try:
                prefix = _prompt_text(parsed, path)
            except RecursionError:  # absurdly nested content parts
                prefix = None
            sticky += [i for i in _body_ids(parsed) if i not in sticky]
    broadcast = path in BROADCAST_PATHS and method.upper() == "POST"
    return RouteKey(pool, None if broadcast else prefix, tuple(sticky), broadcast)


def _point(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


class Router:
    """Orders the live replicas of a request's pool: pinned owner, else ring (or rotation), then
    the rest least loaded first. Load = max(reported load, requests this ingress has in flight on
    the replica), so a burst between two heartbeats still spreads."""

    def __init__(self, policy: str = "prefix", *, prefix_chars: int = 256, vnodes: int = 64,
                 load_slack: int = 4, sticky_capacity: int = 100_000):
        if policy not in POLICIES:
            raise ValueError(f"routing policy must be one of {POLICIES}, got {policy!r}")
        if not 1 <= prefix_chars <= MAX_KEY_TEXT_CHARS:
            raise ValueError(f"prefix_chars must be in 1..{MAX_KEY_TEXT_CHARS}, got {prefix_chars}")
        if vnodes < 1 or load_slack < 0 or sticky_capacity < 1:
            raise ValueError(f"need vnodes >= 1, load_slack >= 0, sticky_capacity >= 1; got "
                             f"{vnodes}, {load_slack}, {sticky_capacity}")
        self.policy, self.prefix_chars, self.vnodes = policy, prefix_chars, vnodes
        self.load_slack, self.sticky_capacity = load_slack, sticky_capacity
        self._live: dict[str, Replica] = {}
        self._rings: dict[str, tuple[list[int], list[str]]] = {}  # pool -> (sorted points, owner ids)
        self._pins: OrderedDict[str, str] = OrderedDict()          # sticky id -> replica id, LRU order
        self._in_flight: dict[str, int] = {}
        self._turns: dict[str, int] = {}                          # pool -> rotation counter

    @property
    def replicas(self) -> list[Replica]:
        return list(self._live.values())

    def update(self, replicas: Iterable[Replica]) -> None:
        """Replace the live set; the rings are rebuilt only when membership changed, not on loads."""
        live = {r.id: r for r in replicas}
        changed = {(r.id, r.kind) for r in live.values()} != {(r.id, r.kind) for r in self._live.values()}
        self._live = live
        if changed:
            self._rings = {pool: self._ring([r for r in live.values() if pool == "any" or r.kind == pool])
                           for pool in ("llm", "media", "any")}
            for sticky_id in [s for s, owner in self._pins.items() if owner not in live]:
                del self._pins[sticky_id]
            self._in_flight = {rid: n for rid, n in self._in_flight.items() if rid in live}

    def _ring(self, members: list[Replica]) -> tuple[list[int], list[str]]:
        points = sorted((_point(f"{r.id}#{v}"), r.id) for r in members for v in range(self.vnodes))
        return [p for p, _ in points], [rid for _, rid in points]

    def members(self, pool: str) -> list[Replica]:
        """Every live replica of `pool`, by id (a broadcast's recipients)."""
        return sorted((r for r in self._live.values() if pool == "any" or r.kind == pool), key=lambda r: r.id)

    def pin(self, sticky_id: str, replica_id: str) -> None:
        self._pins[sticky_id] = replica_id
        self._pins.move_to_end(sticky_id)
        if len(self._pins) > self.sticky_capacity:
            self._pins.popitem(last=False)

    def begin(self, replica_id: str) -> None:
        """The ingress sent a request to `replica_id`; pair with `end`."""
        self._in_flight[replica_id] = self._in_flight.get(replica_id, 0) + 1

    def end(self, replica_id: str) -> None:
        if self._in_flight.get(replica_id, 0) > 0:
            self._in_flight[replica_id] -= 1

    def load(self, replica_id: str) -> int:
        return max(self._live[replica_id].load, self._in_flight.get(replica_id, 0))

    def candidates(self, key: RouteKey) -> list[Replica]:
        pool = [r for r in self._live.values() if key.pool == "any" or r.kind == key.pool]
        if not pool:
            return []
        first = self._owner(key, pool)
        if first is None and key.prefix is not None and self.policy == "prefix":
            first = self._on_ring(key.pool, key.prefix[:self.prefix_chars], pool)
        turn = self._turns[key.pool] = self._turns.get(key.pool, -1) + 1
        # rotation first, then a stable sort by load: least loaded, ties taken in turn
        ordered_by_id = sorted(pool, key=lambda r: r.id)
        shift = turn % len(pool)
        ordered = sorted(ordered_by_id[shift:] + ordered_by_id[:shift], key=lambda r: self.load(r.id))
        if first is None and self.policy == "round_robin" and key.prefix is not None:
            first = ordered_by_id[shift]
        if first is None:
            return ordered
        return [first] + [r for r in ordered if r.id != first.id]

    def _owner(self, key: RouteKey, pool: list[Replica]) -> Replica | None:
        for sticky_id in key.sticky:
            owner = self._pins.get(sticky_id)
            if owner is not None and any(r.id == owner for r in pool):
                self._pins.move_to_end(sticky_id)
                return self._live[owner]
        return None

    def _on_ring(self, pool_name: str, prefix: str, pool: list[Replica]) -> Replica:
        points, owners = self._rings[pool_name]
        bound = min(self.load(r.id) for r in pool) + self.load_slack
        start, seen = bisect_right(points, _point(prefix)), set()
        for step in range(len(points)):
            rid = owners[(start + step) % len(points)]
            if rid not in seen:
                seen.add(rid)
                if self.load(rid) <= bound:
                    return self._live[rid]
        raise AssertionError("the least loaded replica is always within the bound")
