"""Which ids a proxied response creates, so later requests naming them reach the replica that holds them.

A response, conversation, thread or container lives in the store (and the caches) of the
replica that made it; a WebRTC session or a WHIP stream lives in the media replica's process (a
WHIP answer is SDP: its id is the last part of its `Location`). The ingress reads
the id from the response as it streams by, without buffering a stream: a JSON body is kept up to
`MAX_JSON_BYTES` (these bodies are small); an SSE stream is read up to its first event carrying
an id, at most `MAX_SSE_BYTES` in.
"""
from __future__ import annotations

import json

MAX_JSON_BYTES = 1 << 20
MAX_SSE_BYTES = 64 << 10
# route families whose created objects are state held by one replica
PINNED_FAMILIES = ("/v1/responses", "/v1/conversations", "/v1/threads", "/v1/containers", "/v1/webrtc/offer")
_ID_FIELDS = ("id", "thread_id", "session_id", "conversation_id")


def location_id(method: str, path: str, status: int, location: str | None) -> str | None:
    """The stream id a `POST /v1/whip` made, from its `201` answer's Location."""
    if method != "POST" or path != "/v1/whip" or status != 201 or not location:
        return None
    return location.rstrip("/").rsplit("/", 1)[-1] or None


def wants_pins(method: str, path: str) -> bool:
    return method == "POST" and any(path == f or path.startswith(f + "/") for f in PINNED_FAMILIES)


def _ids(obj, nested: bool = False) -> list[str]:
    if not isinstance(obj, dict):
        return []
    found = [obj[name] for name in _ID_FIELDS if isinstance(obj.get(name), str)]
    conversation = obj.get("conversation")  # a response names its conversation as an id or an object
    if isinstance(conversation, dict):
        conversation = conversation.get("id")
    if isinstance(conversation, str):
        found.append(conversation)
    if not nested:  # Responses SSE events wrap the response object
        found += _ids(obj.get("response"), nested=True)
    return found


class IdSniffer:
    """Fed the body chunks of one response; `ids` once `done()` (JSON) or at the first SSE event
    with an id. `content_type` picks the reading."""

    def __init__(self, content_type: str) -> None:
        self.sse = content_type.startswith("text/event-stream")
        self.json = content_type.startswith("application/json")
        self._buffer = bytearray()
        self._seen = 0
        self.ids: list[str] = []
        self.finished = not (self.sse or self.json)

    def feed(self, chunk: bytes) -> list[str]:
        """New ids found in this chunk (SSE only; JSON ids come from `done`)."""
        if self.finished:
            return []
        self._seen += len(chunk)
        limit = MAX_SSE_BYTES if self.sse else MAX_JSON_BYTES
        if self._seen > limit:
            self.finished, self._buffer = True, bytearray()
            return []
        self._buffer += chunk
        if not self.sse:
            return []
        while b"\n\n" in self._buffer:
            event, _, rest = bytes(self._buffer).partition(b"\n\n")
            self._buffer = bytearray(rest)
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    try:
                        found = _ids(json.loads(line[5:]))
                    except ValueError:
                        continue
                    if found:
                        self.finished, self.ids = True, found
                        return found
        return []

    def done(self) -> list[str]:
        if self.finished or not self.json:
            return []
        self.finished = True
        try:
            self.ids = _ids(json.loads(bytes(self._buffer)))
        except ValueError:
            return []
        return self.ids
