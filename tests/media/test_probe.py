"""The latency probe: pixel ids survive stamping and reading, and a --latency-probe server puts each
input frame's id on the stylized frame made from it."""
from __future__ import annotations

import time

import numpy as np

from livecast.services.media import probe
from tests.media.rtc_client import MovingPattern, RTCClient
from tests.media.test_webrtc_api import wait_drained


def test_ids_round_trip_and_garbage_reads_as_none():
    rng = np.random.default_rng(0)
    for frame_id in (0, 1, 7, 1234, probe.MAX_ID - 1):
        rgb = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
        probe.stamp_id(rgb, frame_id)
        assert probe.read_id(rgb) == frame_id
        noisy = np.clip(rgb.astype(np.int16) + rng.integers(-40, 41, rgb.shape), 0, 255).astype(np.uint8)
        assert probe.read_id(noisy) == frame_id  # codec-like noise does not flip a block
    assert probe.read_id(np.zeros((96, 128, 3), np.uint8)) is None  # all-black fails the check bits
    assert probe.read_id(np.zeros((8, 32, 3), np.uint8)) is None  # too small to carry blocks
    flipped = np.zeros((96, 128, 3), np.uint8)
    probe.stamp_id(flipped, 1234)
    flipped[:8, :8] = 255 - flipped[:8, :8]  # one id bit flipped
    assert probe.read_id(flipped) is None


class StampedCamera(MovingPattern):
    def __init__(self) -> None:
        super().__init__()
        self.sent_at: dict[int, float] = {}

    def image(self, index: int) -> np.ndarray:
        rgb = super().image(index)
        probe.stamp_id(rgb, index)
        self.sent_at.setdefault(index, time.monotonic())
        return rgb


def stamped_client(url: str) -> RTCClient:
    client = RTCClient(url)
    client.pc.getTransceivers()[0].sender.replaceTrack(camera := StampedCamera())
    client.camera = camera
    return client


async def test_probe_server_stamps_input_ids_on_stylized_output(media_server, monkeypatch):
    monkeypatch.setattr(media_server.diffusion.video, "latency_probe", True)
    client = stamped_client(media_server.url)
    camera = client.camera
    try:
        assert (await client.connect(prompt="probe", strength=1.0)).status_code == 200
        await client.wait_frames(20)
        ids = [probe.read_id(f.to_ndarray(format="rgb24")) for f in client.frames[5:]]
        decoded = [i for i in ids if i is not None]
        assert len(decoded) >= 0.9 * len(ids)  # the stylized picture under the strip does not matter
        assert decoded == sorted(decoded) and len(set(decoded)) == len(decoded)
        assert decoded[-1] < camera.count
    finally:
        await client.close()
        await wait_drained(media_server.diffusion)


async def test_a_busy_device_lowers_the_frame_rate_not_the_freshness(media_server, monkeypatch):
    """Each batch starts only after 250 ms of other device work (an LLM step, say). Frames keep
    replacing the one waiting in the batcher meanwhile, so the frame a batch takes is at most one
    camera period old and what comes out is about as fresh as on an idle device, only rarer."""
    service = media_server.diffusion
    monkeypatch.setattr(service.video, "latency_probe", True)
    take_batch = service.batcher._take_batch

    def busy_then_take():
        time.sleep(0.25)
        return take_batch()

    monkeypatch.setattr(service.batcher, "_take_batch", busy_then_take)
    client = stamped_client(media_server.url)
    try:
        assert (await client.connect(prompt="busy", strength=1.0)).status_code == 200
        await client.wait_frames(12, timeout=30)
        ages = [received - client.camera.sent_at[i] for frame, received in zip(client.frames[2:], client.received_at[2:])
                if (i := probe.read_id(frame.to_ndarray(format="rgb24"))) is not None]
        assert len(ages) >= 8
        assert float(np.median(ages)) < 0.2, ages  # a frame taken before the 250 ms wait would be older
        span = client.received_at[-1] - client.received_at[2]
        assert span / (len(client.frames) - 3) >= 0.25  # one frame per busy period at most
    finally:
        await client.close()
        await wait_drained(service)
