"""Sessions end cleanly: never-connected offers time out, shutdown closes every peer; /health and
/metrics report the diffusion side."""
from __future__ import annotations

import asyncio

import httpx
from aiortc import RTCPeerConnection

import livecast.services.media.peer
from livecast.services.media.config import MediaConfig
from livecast.services.media.service import MediaService
from livecast.services.runtime.loop import DeviceRuntime
from tests.media.app import build_app
from tests.media.conftest import MediaServer
from tests.media.rtc_client import MovingPattern, RTCClient
from tests.media.test_webrtc_api import wait_drained


async def test_offer_that_never_connects_is_closed(media_server, monkeypatch):
    monkeypatch.setattr(livecast.services.media.peer, "CONNECT_TIMEOUT_S", 1.0)
    pc = RTCPeerConnection()
    pc.addTrack(MovingPattern())
    await pc.setLocalDescription(await pc.createOffer())
    async with httpx.AsyncClient(base_url=media_server.url) as http:
        response = await http.post("/v1/webrtc/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"})
    assert response.status_code == 200
    assert response.json()["session_id"] in media_server.diffusion.video.sessions
    # the answer is never applied, so ICE cannot complete: the deadline closes the session
    await wait_drained(media_server.diffusion, timeout=10)
    await pc.close()


async def test_shutdown_closes_every_peer():
    server = MediaServer(build_app(diffusion=dict(resolution=128))).start()
    service = server.diffusion
    clients = [RTCClient(server.url) for _ in range(2)]
    try:
        for client in clients:
            assert (await client.connect(prompt="shutdown")).status_code == 200
        await asyncio.gather(*(c.wait_frames(3) for c in clients))
        assert len(service.video.peers) == 2
        await asyncio.to_thread(server.stop)  # the lifespan's exit closes the peers, then the batcher
        assert not service.video.peers and not service.video.sessions
        assert not service.batcher.stream_ids() and service.batcher._thread is None
        for client in clients:  # the browser side sees the hang-up
            for _ in range(100):
                if client.pc.connectionState == "closed":
                    break
                await asyncio.sleep(0.05)
            assert client.pc.connectionState == "closed"
    finally:
        await asyncio.gather(*(c.close() for c in clients))
        if server.alive:
            server.stop()


def test_health_and_metrics_report_the_diffusion_side(media_server, http):
    health = http.get("/health").json()
    assert health["status"] == "ok" and health["llm"] is None
    diffusion = health["diffusion"]
    assert diffusion["model"] == "demo" and diffusion["demo"] is True and diffusion["device"] == "cpu"
    assert diffusion["resolution"] == [128, 128] and diffusion["max_video_sessions"] == 2
    http.post("/v1/images/generations", json={"prompt": "metrics", "n": 2})
    text = http.get("/metrics").text
    assert 'livecast_diffusion_frames_total{source="images"}' in text
    count = [line for line in text.splitlines()
             if line.startswith('livecast_diffusion_frame_latency_seconds_count{source="images"}')]
    assert count and float(count[0].split()[-1]) >= 1
    for name in ("livecast_video_sessions", "livecast_video_output_fps", "livecast_diffusion_frames_pending",
                 "livecast_diffusion_frames_dropped_total"):
        assert name in text, name


async def test_the_runtime_drives_the_batcher():
    """No private thread: a frame waits until the device runtime, woken by the submit, steps it."""
    config = MediaConfig(resolution=64)
    service = MediaService(await asyncio.to_thread(config.load_pipeline), config)
    service.start()
    woken = []
    service.batcher.set_notify(lambda: woken.append(1))
    try:
        assert service.batcher._thread is None and service.health()["healthy"]
        stream_id = service.open_stream(prompt="driven")
        frame = asyncio.ensure_future(service.process(stream_id, None, "ws"))
        await asyncio.sleep(0.3)
        assert not frame.done() and service.batcher.has_work() and woken == [1]
        runtime = DeviceRuntime(None, service.batcher)
        assert await asyncio.to_thread(runtime.step) and runtime.stats.diffusion_frames == 1
        image = await asyncio.wait_for(frame, 10)
        assert image.size == (64, 64) and not service.batcher.has_work()
    finally:
        await service.stop()


def test_api_key_guards_the_api_but_not_the_pages():
    from fastapi.testclient import TestClient
    from starlette.testclient import WebSocketDenialResponse

    app = build_app(diffusion=dict(resolution=64), api_key="sk-media")
    with TestClient(app) as client:
        assert client.get("/stylize.html").status_code == 200
        assert "Stylize" in client.get("/stylize.html").text and client.get("/").status_code == 200
        assert client.post("/v1/images/generations", json={"prompt": "x"}).status_code == 401
        assert client.post("/v1/webrtc/offer", json={"sdp": "v=0", "type": "offer"}).status_code == 401
        ok = client.post("/v1/images/generations", json={"prompt": "x"}, headers={"Authorization": "Bearer sk-media"})
        assert ok.status_code == 200 and len(ok.json()["data"]) == 1
        try:
            with client.websocket_connect("/v1/ws/frames") as ws:
                ws.receive_json()
            raise AssertionError("the socket opened without a key")
        except WebSocketDenialResponse as denial:  # the same 401 as /v1/ws/generate gives
            assert denial.status_code == 401 and denial.json()["error"]["code"] == "invalid_api_key"
        with client.websocket_connect("/v1/ws/frames?api_key=sk-media") as ws:
            assert ws.receive_json()["type"] == "hello"
        # the pages never shadow the API: with the key, unknown paths 404, wrong methods 405, both
        # OpenAI-shaped; without it, a route's every method is 401
        auth = {"Authorization": "Bearer sk-media"}
        assert client.get("/v1/nothing").json()["error"]["type"] == "invalid_request_error"
        assert client.get("/v1/nothing").status_code == 404
        assert client.post("/nothing.html", headers=auth).status_code == 404
        assert client.get("/v1/images/generations", headers=auth).status_code == 405
        assert client.get("/v1/images/generations").status_code == 401


def test_serve_flags_reach_the_diffusion_config():
    import pytest

    from livecast.services.serve import parse_settings

    settings, _ = parse_settings(["--diffusion-model", "sd-turbo-shape", "--max-video-sessions", "2",
                                  "--latency-probe", "--diffusion-resolution", "192", "--diffusion-dtype", "bfloat16"])
    config = settings.diffusion
    assert (config.model, config.max_video_sessions, config.latency_probe, config.resolution, config.dtype) == \
        ("sd-turbo-shape", 2, True, 192, "bfloat16")
    assert parse_settings([])[0].diffusion == MediaConfig()
    assert not parse_settings(["--no-diffusion"])[0].enable_diffusion
    for bad in ({"max_video_sessions": 0}, {"resolution": 4}, {"max_frame_clients": 0}, {"dtype": "int4"}):
        with pytest.raises(ValueError):
            MediaConfig(**bad)
