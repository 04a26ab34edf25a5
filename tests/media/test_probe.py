"""The latency probe: pixel ids survive stamping and reading, and a --latency-probe server puts each
input frame's id on the stylized frame made from it."""
from __future__ import annotations

import numpy as np

from services import probe
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
    def image(self, index: int) -> np.ndarray:
        rgb = super().image(index)
        probe.stamp_id(rgb, index)
        return rgb


async def test_probe_server_stamps_input_ids_on_stylized_output(media_server, monkeypatch):
    monkeypatch.setattr(media_server.diffusion.video, "latency_probe", True)
    client = RTCClient(media_server.url)
    client.pc.getTransceivers()[0].sender.replaceTrack(camera := StampedCamera())
    client.camera = camera
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
