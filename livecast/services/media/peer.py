"""One aiortc peer connection of the media room, and the SDP offer/answer around it.

`Peer` is what a WebRTC session, a WHIP source and a WHEP viewer share: its connection (host
candidates only), the tasks that serve it, a deadline to connect, trickled ICE candidates, and one
idempotent close. `negotiate` answers an offer (non-trickle: the answer carries every candidate);
`check_offer` refuses, before anything is allocated, offers aiortc would choke on later.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid

from aiortc import RTCConfiguration, RTCIceCandidate, RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp

logger = logging.getLogger("livecast.media")

CONNECT_TIMEOUT_S = 30.0  # a peer that never connects is closed
NEGOTIATE_TIMEOUT_S = 15.0


class OfferError(ValueError):
    """The offer cannot be answered (bad SDP, no video): a 400."""


class SessionLimit(Exception):
    """A limit on live peers is reached: a 503."""


class Peer:
    """One peer connection and the tasks that serve it; closed once. `owner.peers` holds every
    live connection of its kind (closed on shutdown). Subclasses say what closing frees at once
    (`_forget`) and may log when the connection is down (`_closed`)."""

    def __init__(self, owner) -> None:
        self.id = uuid.uuid4().hex[:16]
        self.owner = owner
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # host candidates only: no STUN
        self.created = time.time()
        self._tasks: set[asyncio.Task] = set()
        self._closing: asyncio.Task | None = None
        owner.peers.add(self.pc)
        self.pc.on("connectionstatechange", self._on_state)

    def _on_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            self.close()

    def spawn(self, coro, name: str | None = None) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def watch(self) -> None:
        self.spawn(self._connect_deadline())

    async def _connect_deadline(self) -> None:
        await asyncio.sleep(CONNECT_TIMEOUT_S)
        if self.pc.connectionState != "connected":
            logger.info("%s %s never connected; closing", type(self).__name__.lower(), self.id)
            self.close()

    async def add_candidates(self, fragment: str) -> int:
        """Trickle ICE (RFC 8840 `application/trickle-ice-sdpfrag`): add the fragment's remote
        candidates; ValueError on a malformed one. Returns how many were added."""
        mid, added = None, 0
        for line in fragment.splitlines():
            line = line.strip()
            if line.startswith("a=mid:"):
                mid = line[len("a=mid:"):]
            elif line.startswith("a=candidate:"):
                candidate = _candidate(line)
                candidate.sdpMid, candidate.sdpMLineIndex = mid, 0 if mid is None else None
                await self.pc.addIceCandidate(candidate)
                added += 1
            elif line == "a=end-of-candidates":
                await self.pc.addIceCandidate(None)
        return added

    def close(self) -> asyncio.Task:
        """Idempotent: forget the peer at once, hang it up soon after."""
        if self._closing is None:
            self._forget()
            self._closing = asyncio.ensure_future(self._close())
        return self._closing

    def _forget(self) -> None:
        raise NotImplementedError

    async def _close(self) -> None:
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        try:
            await self.pc.close()
        finally:
            self.owner.peers.discard(self.pc)
            self._closed()

    def _closed(self) -> None:
        pass


async def negotiate(pc: RTCPeerConnection, sdp: str, sdp_type: str, ready, missing: str) -> None:
    """Take the remote offer, check `ready()` (else OfferError(missing)), answer with every
    candidate gathered (non-trickle). Any failure or a stall is an OfferError."""
    async def run() -> None:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=sdp_type))
        if not ready():
            raise OfferError(missing)
        await pc.setLocalDescription(await pc.createAnswer())

    try:
        await asyncio.wait_for(run(), NEGOTIATE_TIMEOUT_S)
    except OfferError:
        raise
    except asyncio.TimeoutError as exc:
        raise OfferError("negotiation timed out") from exc
    except Exception as exc:
        raise OfferError(f"cannot answer the offer: {exc or type(exc).__name__}") from exc


def check_offer(sdp: str) -> None:
    """Refuse, before any session slot is taken, offers aiortc would choke on later: no DTLS
    fingerprint (the handshake would assert), or more than one video track to stylize."""
    lines = sdp.splitlines()
    if not any(line.startswith("a=fingerprint:") for line in lines):
        raise OfferError("the offer has no DTLS fingerprint (a=fingerprint:); WebRTC media must be encrypted")
    videos = sum(line.startswith("m=video") for line in lines)
    if videos == 0:
        raise OfferError("the offer has no video track to stylize")
    if videos > 1:
        raise OfferError(f"the offer must carry one video track to stylize, got {videos}")


def _candidate(line: str) -> RTCIceCandidate:
    """`a=candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type> ...`"""
    value = line[len("a=candidate:"):]
    bits = value.split()
    if len(bits) < 8 or bits[6] != "typ" or not (bits[1].isdigit() and bits[3].isdigit() and bits[5].isdigit()):
        raise ValueError(f"malformed ICE candidate line {line[:80]!r}")
    try:
        return candidate_from_sdp(value)
    except (ValueError, IndexError, AssertionError) as exc:  # aiortc checks with assert
        raise ValueError(f"malformed ICE candidate line {line[:80]!r}") from exc
