"""WHIP in, WHEP out: aiortc clients act as OBS (send-only video + audio) and as players
(receive-only), on 127.0.0.1, against the real app."""
from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.media.app import build_app
from tests.media.conftest import running
from tests.media.rtc_client import Player, Publisher, RTCClient


@pytest.fixture(scope="module")
def server():
    with running(build_app(diffusion=dict(resolution=64, max_whip_sources=2, max_whep_viewers=9))) as server:
        yield server


async def _drained(service, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while service.broadcasts.sources or service.broadcasts.peers or service.batcher.stream_ids():
        assert time.monotonic() < deadline, (list(service.broadcasts.sources), len(service.broadcasts.peers))
        await asyncio.sleep(0.05)


async def test_publish_watch_three_viewers_change_prompt_and_hang_up(server):
    service = server.diffusion
    publisher = Publisher(server.url)
    players = [Player(server.url) for _ in range(3)]
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        try:
            response = await publisher.publish("?prompt=a%20watercolor%20city&strength=0.6&seed=7")
            assert response.status_code == 201, response.text
            assert response.headers["content-type"].startswith("application/sdp")
            assert response.headers["location"].startswith("/v1/whip/")
            stream_id = publisher.stream_id
            assert [(await p.watch(stream_id)).status_code for p in players] == [201] * 3
            await asyncio.gather(*(p.wait_frames(5) for p in players))
            listed = (await http.get("/v1/streams")).json()["data"]
            assert [(s["id"], s["viewers"]) for s in listed] == [(stream_id, 3)]
            assert listed[0]["settings"]["prompt"] == "a watercolor city" and listed[0]["settings"]["seed"] == 7
            # a prompt change mid-stream reaches the batcher stream and frames keep coming
            changed = await http.patch(f"/v1/streams/{stream_id}", json={"prompt": "neon city", "strength": 0.8})
            assert changed.status_code == 200 and changed.json()["settings"]["prompt"] == "neon city"
            source = service.broadcasts.get(stream_id, "default")
            assert service.batcher.params(source.stream_id).prompt == "neon city"
            before = [len(p.frames) for p in players]
            await asyncio.gather(*(p.wait_frames(n + 5) for p, n in zip(players, before)))
            bad = await http.patch(f"/v1/streams/{stream_id}", json={"strength": 7})
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "strength"
            # a viewer leaves: the others keep watching
            assert (await http.delete(players[0].location)).status_code == 200
            assert (await http.get(f"/v1/streams/{stream_id}")).json()["viewers"] == 2
            counts = [len(p.frames) for p in players[1:]]
            await asyncio.gather(*(p.wait_frames(n + 3) for p, n in zip(players[1:], counts)))
            # the publisher stops: every viewer's track ends, nothing stays allocated
            assert (await http.delete(publisher.location)).status_code == 200
            await asyncio.wait_for(asyncio.gather(*(p.ended.wait() for p in players[1:])), 15)
            await _drained(service)
            assert (await http.get(f"/v1/streams/{stream_id}")).status_code == 404
        finally:
            await publisher.close()
            for player in players:
                await player.close()
            if publisher.location:
                await http.delete(publisher.location)
            await _drained(service)


async def test_eight_viewers_cost_one_unet_row_per_source_frame(server):
    service = server.diffusion
    rows = []  # (stream, ...) rows of every batched pipeline call
    run = service.pipe.run

    def counting(items, **kwargs):
        rows.append(len(items))
        return run(items, **kwargs)

    service.pipe.run = counting
    publisher, players = Publisher(server.url), [Player(server.url) for _ in range(8)]
    try:
        assert (await publisher.publish("?prompt=ink")).status_code == 201
        assert [(await p.watch(publisher.stream_id)).status_code for p in players] == [201] * 8
        await asyncio.gather(*(p.wait_frames(10) for p in players))
        source = service.broadcasts.get(publisher.stream_id, "default")
        with service.batcher._step_lock:  # between two batched steps: nothing half-counted
            made, total_rows = service.batcher.stats(source.stream_id)["frames_out"], sum(rows)
        # one row per source frame, whatever the number of viewers
        assert total_rows == made and made >= 10
        assert source.stats.frames_out <= made
        # every viewer was sent frames from the one fan-out, none more than were made
        assert all(10 <= len(p.frames) <= made for p in players)
        assert sum(v.frames_sent for v in source.viewers.values()) >= 8 * 10
        # the publisher hangs up without a DELETE: its source, stream and viewers go all the same
        await publisher.close()
        await _drained(service)
        await asyncio.wait_for(asyncio.gather(*(p.ended.wait() for p in players)), 15)
    finally:
        service.pipe.run = run
        await publisher.close()
        for player in players:
            await player.close()
        async with httpx.AsyncClient(base_url=server.url) as http:
            if publisher.location:
                await http.delete(publisher.location)
        await _drained(service)


async def test_bad_requests_are_4xx_and_leave_nothing_allocated(server):
    service = server.diffusion
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        sdp_header = {"Content-Type": "application/sdp"}
        bad = await http.post("/v1/whip", content="v=0\r\nnot an offer\r\n", headers=sdp_header)
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_sdp"
        wrong_type = await http.post("/v1/whip", json={"sdp": "v=0"})
        assert wrong_type.status_code == 415
        publisher = Publisher(server.url)
        try:
            bad_setting = await publisher.publish("?strength=abc")
            assert bad_setting.status_code == 400 and bad_setting.json()["error"]["param"] == "strength"
            unknown = await publisher.publish("", headers={"Livecast-Settings": '{"colour": 1}'})
            assert unknown.status_code == 400 and "colour" in unknown.json()["error"]["message"]
        finally:
            await publisher.close()
        player = Player(server.url)
        try:
            missing = await player.watch("nope")
            assert missing.status_code == 404 and missing.json()["error"]["code"] == "stream_not_found"
        finally:
            await player.close()
        assert (await http.delete("/v1/whip/nope")).status_code == 404
        frag = await http.patch("/v1/whip/nope", content="a=mid:0\r\n",
                                headers={"Content-Type": "application/trickle-ice-sdpfrag"})
        assert frag.status_code == 404
    await _drained(service)


async def test_trickled_candidates_are_taken_and_bad_ones_refused(server):
    service = server.diffusion
    publisher = Publisher(server.url)
    try:
        assert (await publisher.publish()).status_code == 201
        candidate = next(line for line in publisher.pc.localDescription.sdp.splitlines()
                         if line.startswith("a=candidate:"))
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            headers = {"Content-Type": "application/trickle-ice-sdpfrag"}
            ok = await http.patch(publisher.location, content=f"a=mid:0\r\n{candidate}\r\n", headers=headers)
            assert ok.status_code == 204, ok.text
            bad = await http.patch(publisher.location, content="a=mid:0\r\na=candidate:garbage\r\n", headers=headers)
            assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_candidate"
            assert (await http.delete(publisher.location)).status_code == 200
    finally:
        await publisher.close()
        await _drained(service)


def test_whip_needs_the_bearer_token():
    with running(build_app(diffusion=dict(resolution=64), api_key="sk-test")) as server:
        with server.http() as http:
            response = http.post("/v1/whip", content="v=0\r\n", headers={"Content-Type": "application/sdp"})
            assert response.status_code == 401
            assert http.get("/v1/streams").status_code == 401
            authed = http.get("/v1/streams", headers={"Authorization": "Bearer sk-test"})
            assert authed.status_code == 200 and authed.json()["data"] == []
        assert not server.diffusion.broadcasts.sources and not server.diffusion.batcher.stream_ids()


async def test_streams_and_sessions_are_scoped_per_project(tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("sk-project-a-0001 proj_a\nsk-project-b-0001 proj_b\n")
    a, b = ({"Authorization": f"Bearer sk-project-{p}-0001"} for p in "ab")
    with running(build_app(diffusion=dict(resolution=64), api_keys=str(keys))) as server:
        service = server.diffusion
        publisher, session = Publisher(server.url, api_key="sk-project-a-0001"), RTCClient(server.url)
        try:
            assert (await publisher.publish("?prompt=ink")).status_code == 201
            assert (await session.connect(headers=a, prompt="ink")).status_code == 200
            stream_id = publisher.stream_id
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
                assert [s["id"] for s in (await http.get("/v1/streams", headers=a)).json()["data"]] == [stream_id]
                assert (await http.get("/v1/streams", headers=b)).json()["data"] == []
                assert [s["id"] for s in (await http.get("/v1/webrtc/sessions", headers=a)).json()["data"]] == \
                    [session.session_id]
                assert (await http.get("/v1/webrtc/sessions", headers=b)).json()["data"] == []
                # another project's stream or session is as missing as one that never was
                for method, path, kwargs in (
                        ("GET", f"/v1/streams/{stream_id}", {}),
                        ("PATCH", f"/v1/streams/{stream_id}", {"json": {"prompt": "mine now"}}),
                        ("PATCH", f"/v1/whip/{stream_id}", {"content": "a=mid:0\r\n", "headers": {
                            "Content-Type": "application/trickle-ice-sdpfrag"}}),
                        ("POST", f"/v1/whep/{stream_id}", {"content": "v=0\r\n", "headers": {
                            "Content-Type": "application/sdp"}}),
                        ("DELETE", f"/v1/whip/{stream_id}", {}),
                        ("DELETE", f"/v1/webrtc/sessions/{session.session_id}", {})):
                    headers = {**b, **kwargs.pop("headers", {})}
                    response = await http.request(method, path, headers=headers, **kwargs)
                    assert response.status_code == 404, (method, path, response.text)
                assert service.broadcasts.get(stream_id, "proj_a").info()["settings"]["prompt"] == "ink"
                assert session.session_id in service.video.sessions
                assert (await http.delete(f"/v1/whip/{stream_id}", headers=a)).status_code == 200
                assert (await http.delete(f"/v1/webrtc/sessions/{session.session_id}", headers=a)).status_code == 200
        finally:
            await publisher.close()
            await session.close()
        await _drained(service)
