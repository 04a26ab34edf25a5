"""POST /v1/webrtc/offer with an aiortc client: frames back, control channel, limits, hang-up."""
from __future__ import annotations

import asyncio

import numpy as np
import PIL.Image

from tests.media.rtc_client import VIDEO_CLOCK, RTCClient


async def wait_drained(service, timeout: float = 10.0) -> None:
    """Until every session (and its peer and batcher stream) is gone."""
    for _ in range(int(timeout / 0.05)):
        if not service.video.sessions and not service.video.peers and not service.batcher.stream_ids():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"sessions left: {list(service.video.sessions)}, peers: {len(service.video.peers)}")


def _closest_input_diff(client: RTCClient, frame) -> float:
    """Mean absolute difference between `frame` and the camera image it most resembles."""
    out = frame.to_ndarray(format="rgb24").astype(np.float32)
    size = (out.shape[1], out.shape[0])
    best = np.inf
    for index in range(max(0, client.camera.count - 120), client.camera.count):
        src = np.asarray(PIL.Image.fromarray(client.camera.image(index)).resize(size, PIL.Image.BILINEAR))
        best = min(best, float(np.abs(out - src).mean()))
    return best


async def test_stylized_frames_differ_from_input_and_keep_pts(media_server):
    stylized, passthrough = RTCClient(media_server.url), RTCClient(media_server.url)
    try:
        assert (await stylized.connect(prompt="neon city", strength=1.0)).status_code == 200
        assert (await passthrough.connect(passthrough=True)).status_code == 200
        await asyncio.gather(stylized.wait_frames(30), passthrough.wait_frames(30))
        # 160x120 in, scaled to fit the 128 px working size on the server, aspect kept
        assert (stylized.frames[-1].width, stylized.frames[-1].height) == (128, 96)
        styl_diff = np.median([_closest_input_diff(stylized, f) for f in stylized.frames[-5:]])
        pass_diff = np.median([_closest_input_diff(passthrough, f) for f in passthrough.frames[-5:]])
        assert pass_diff < 12, pass_diff  # only the codec's loss
        assert styl_diff > pass_diff + 15, (styl_diff, pass_diff)
        # the server keeps each input frame's pts: output steps are whole camera frame periods
        # (up to the VP8 encoders' +-2 tick rounding), whatever the server's own pace
        period = VIDEO_CLOCK // stylized.camera.fps
        steps = np.diff(np.array([f.pts for f in stylized.frames], dtype=np.int64)) % 2**32
        off = (steps + period // 2) % period - period // 2
        assert np.all(np.abs(off) <= 2) and np.all(steps >= period - 2), steps
        assert stylized.frames[-1].time_base.denominator == VIDEO_CLOCK
    finally:
        await stylized.close()
        await passthrough.close()
        await wait_drained(media_server.diffusion)


async def test_control_updates_reach_the_pipeline_and_stats_arrive(media_server):
    service = media_server.diffusion
    client = RTCClient(media_server.url)
    try:
        response = await client.connect(prompt="first prompt", seed=3)
        assert response.status_code == 200, response.text
        hello = await client.wait_message(lambda m: m["type"] == "hello")
        assert hello["session_id"] == client.session_id and hello["settings"]["prompt"] == "first prompt"
        await client.wait_frames(5)
        stream_id = service.video.sessions[client.session_id].stream_id

        client.send({"prompt": "second prompt", "strength": 1.0, "guidance_scale": 1.5, "seed": 9,
                     "similarity_filter": True})
        ack = await client.wait_message(lambda m: m["type"] == "settings")
        assert ack["settings"]["prompt"] == "second prompt" and ack["settings"]["similarity_filter"] is True
        # the batcher builds the next frame's state from the new settings
        frames_before = len(client.frames)
        await client.wait_frames(frames_before + 3)
        state = service.batcher._streams[stream_id].state
        assert state.params.prompt == "second prompt" and state.params.seed == 9
        assert state.params.strength == 1.0 and state.filter is not None

        client.send({"t_index_list": [0, 1]})
        ack = await client.wait_message(lambda m: m["type"] == "settings" and m["settings"]["t_index_list"] == [0, 1])
        client.send({"strength": 7})
        error = await client.wait_message(lambda m: m["type"] == "error")
        assert error["param"] == "strength" and "strength" in error["message"]
        client.send({"bogus": 1})
        await client.wait_message(lambda m: m["type"] == "error" and "bogus" in m["message"])

        stats = await client.wait_message(lambda m: m["type"] == "stats" and m["frames_out"] > 0)
        assert stats["output_fps"] > 0 and stats["input_fps"] > 0
        assert stats["latency_ms"]["p95"] >= stats["latency_ms"]["p50"] > 0
        assert stats["frames_in"] >= stats["frames_out"] + stats["dropped"] - 1
    finally:
        await client.close()
        await wait_drained(service)


async def test_hang_up_frees_the_session(media_server, http):
    service = media_server.diffusion
    client = RTCClient(media_server.url)
    await client.connect(prompt="bye")
    await client.wait_frames(3)
    stream_id = service.video.sessions[client.session_id].stream_id
    assert stream_id in service.batcher.stream_ids()
    listed = http.get("/v1/webrtc/sessions").json()["data"]
    assert [s["id"] for s in listed] == [client.session_id] and listed[0]["state"] == "connected"
    await client.close()
    await wait_drained(service)
    assert stream_id not in service.batcher.stream_ids()
    assert http.get("/v1/webrtc/sessions").json()["data"] == []


async def test_session_limit_gives_503_and_delete_frees_a_slot(media_server, http):
    clients = [RTCClient(media_server.url) for _ in range(3)]
    try:
        for client in clients[:2]:
            assert (await client.connect()).status_code == 200
        refused = await clients[2].connect()
        assert refused.status_code == 503 and refused.headers["retry-after"]
        assert refused.json()["error"]["code"] == "too_many_sessions"
        response = http.delete(f"/v1/webrtc/sessions/{clients[0].session_id}")
        assert response.status_code == 200 and response.json()["deleted"] is True
        assert http.delete(f"/v1/webrtc/sessions/{clients[0].session_id}").status_code == 404
        late = RTCClient(media_server.url)
        clients.append(late)
        assert (await late.connect()).status_code == 200
        await asyncio.gather(clients[1].wait_frames(1), late.wait_frames(1))  # connected: hang-ups are seen
    finally:
        await asyncio.gather(*(c.close() for c in clients))
        await wait_drained(media_server.diffusion)


def test_bad_offers_are_400s(media_server, http):
    cases = [
        ({"sdp": "v=0\r\nthis is not sdp", "type": "offer"}, "sdp"),
        ({"sdp": "", "type": "offer"}, "sdp"),
        ({"sdp": "v=0", "type": "answer"}, "type"),
        ({"type": "offer"}, "sdp"),
        ({"sdp": "v=0", "type": "offer", "strength": 3.0}, "strength"),
        ({"sdp": "v=0", "type": "offer", "unknown_setting": 1}, "unknown_setting"),
    ]
    for body, param in cases:
        response = http.post("/v1/webrtc/offer", json=body)
        assert response.status_code == 400, (body, response.text)
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == param, (body, error)
    assert http.post("/v1/webrtc/offer", content=b"{not json", headers={"content-type": "application/json"}
                     ).status_code == 400
    # nothing leaked from the failed offers
    service = media_server.diffusion
    assert not service.video.sessions and not service.video.peers and not service.batcher.stream_ids()


async def test_offer_without_video_is_400(media_server):
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection()
    pc.createDataChannel("control")
    await pc.setLocalDescription(await pc.createOffer())
    import httpx
    async with httpx.AsyncClient(base_url=media_server.url) as http:
        response = await http.post("/v1/webrtc/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"})
    await pc.close()
    assert response.status_code == 400 and "no video track" in response.json()["error"]["message"]
    assert not media_server.diffusion.video.sessions
