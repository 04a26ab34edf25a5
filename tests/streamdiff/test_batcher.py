"""StreamBatcher: shared batches equal solo runs; latest frame wins; bounded; thread-safe."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from livecast.streamdiff import FrameDropped, StreamBatcher, StreamParams
from tests.streamdiff.conftest import UNetCalls, frame, make_pipe, pixels

STREAMS = {
    "a": dict(prompt="a cat", seed=1, strength=0.5),
    "b": dict(prompt="neon city", seed=2, strength=0.75, num_inference_steps=4),  # 3-slot buffer
    "c": dict(prompt="", seed=3, strength=1.0, num_inference_steps=1, guidance_scale=2.0,
              cfg_type="full"),
    "d": dict(prompt="a dog", seed=4, strength=0.5, guidance_scale=2.0, cfg_type="self"),
}


def solo_outputs(params: dict, frames: list) -> list:
    pipe = make_pipe()
    state = pipe.new_state(StreamParams(**params))
    return [pipe.run([(state, f)])[0] for f in frames]


def test_multi_stream_batch_equals_each_stream_alone():
    pipe = make_pipe()
    batcher = StreamBatcher(pipe, max_batch_size=8)
    for sid, params in STREAMS.items():
        batcher.add_stream(sid, **params)
    frames = {sid: [frame(100 * i + k) for k in range(4)] for i, sid in enumerate(STREAMS)}
    frames["c"] = [None] * 4  # a txt2img stream in the same batches
    calls = UNetCalls(pipe.unet)
    got = {sid: [] for sid in STREAMS}
    for k in range(4):
        futures = {sid: batcher.submit(sid, frames[sid][k]) for sid in STREAMS}
        assert batcher.num_pending() == 4
        assert batcher.step() == 4
        for sid, future in futures.items():
            got[sid].append(future.result(timeout=0))
    # One UNet call per step after the first (where stream b primes its 3-slot buffer).
    rows = calls.take()
    assert len(rows) == 3 + 3
    assert rows[3:] == [1 + 3 + 2 + 1] * 3
    for sid, params in STREAMS.items():
        for k, expected in enumerate(solo_outputs(params, frames[sid])):
            assert abs(pixels(got[sid][k]) - pixels(expected)).max() <= 1, (sid, k)


def test_latest_frame_wins_and_drops_are_counted():
    batcher = StreamBatcher(make_pipe())
    batcher.add_stream("s", prompt="x")
    first = batcher.submit("s", frame(1))
    second = batcher.submit("s", frame(2))
    with pytest.raises(FrameDropped):
        first.result(timeout=0)
    assert batcher.num_pending() == 1
    assert batcher.step() == 1
    assert second.result(timeout=0).size == frame(2).size
    assert batcher.step() == 0
    stats = batcher.stats("s")
    assert (stats["frames_in"], stats["frames_out"], stats["frames_dropped"]) == (2, 1, 1)
    assert stats["last_latency_ms"] > 0


def test_a_replacement_keeps_the_streams_wait_but_its_own_latency():
    batcher = StreamBatcher(make_pipe())
    batcher.add_stream("s", prompt="x")
    first_at = time.monotonic()
    batcher.submit("s", frame(1))
    time.sleep(0.05)
    latest = batcher.submit("s", frame(2))
    assert batcher.oldest_pending_age_s() >= 0.05  # the stream has waited since its first frame
    assert batcher.step() == 1 and latest.done()
    since_first_ms = 1000 * (time.monotonic() - first_at)
    assert batcher.stats("s")["last_latency_ms"] <= since_first_ms - 45  # timed from its own submit
    assert batcher.oldest_pending_age_s() == 0.0


def test_step_takes_oldest_first_up_to_max_batch_size():
    pipe = make_pipe()
    batcher = StreamBatcher(pipe, max_batch_size=2)
    futures = {}
    for i in range(5):
        batcher.add_stream(i, seed=i)
    for i in (3, 1, 4, 0, 2):
        futures[i] = batcher.submit(i, frame(i))
        time.sleep(0.002)
    assert batcher.oldest_pending_age_s() > 0
    calls = UNetCalls(pipe.unet)
    assert batcher.step() == 2
    assert calls.take() == [2]
    assert {i for i, f in futures.items() if f.done()} == {3, 1}
    assert batcher.step() == 2 and batcher.step() == 1 and batcher.step() == 0
    assert batcher.num_pending() == 0 and batcher.oldest_pending_age_s() == 0.0


def test_streams_join_leave_and_update_at_any_time():
    pipe = make_pipe()
    batcher = StreamBatcher(pipe)
    batcher.add_stream("a", prompt="a cat", seed=1)
    batcher.submit("a", frame(1))
    batcher.step()
    batcher.add_stream("b", prompt="a dog", seed=2)
    pending = batcher.submit("b", frame(2))
    batcher.remove_stream("b")
    with pytest.raises(FrameDropped):
        pending.result(timeout=0)
    with pytest.raises(KeyError):
        batcher.submit("b", frame(2))
    batcher.update_stream("a", prompt="a red bird", strength=0.75, num_inference_steps=4)
    out = batcher.submit("a", frame(3))
    batcher.step()
    expected = solo_outputs(dict(prompt="a red bird", seed=1, strength=0.75, num_inference_steps=4),
                            [frame(3)])[0]
    assert np.array_equal(pixels(out.result(timeout=0)), pixels(expected))
    assert batcher.stream_ids() == ["a"]


def test_bad_settings_and_frames_fail_at_the_call_site():
    batcher = StreamBatcher(make_pipe(), max_streams=1)
    batcher.add_stream("a")
    with pytest.raises(ValueError, match="already exists"):
        batcher.add_stream("a")
    with pytest.raises(ValueError, match="too many streams"):
        batcher.add_stream("b")
    with pytest.raises(ValueError, match="strength"):
        batcher.update_stream("a", strength=0.0)
    with pytest.raises(ValueError, match="multiple of"):
        batcher.update_stream("a", width=30)
    with pytest.raises(ValueError, match="unknown stream setting"):
        batcher.update_stream("a", colour="red")
    with pytest.raises(ValueError, match="empty"):
        batcher.submit("a", np.zeros((0, 4, 3), np.uint8))


def test_the_batcher_holds_each_streams_one_params():
    batcher = StreamBatcher(make_pipe())
    batcher.add_stream("a", prompt="a cat", t_index_list=[0, 1], num_inference_steps=2)
    assert batcher.params("a") == StreamParams(prompt="a cat", t_index_list=(0, 1), num_inference_steps=2)
    updated = batcher.update_stream("a", t_index_list=[1], seed=7)  # any sequence; stored as a tuple
    assert updated.t_index_list == (1,) and batcher.params("a") is updated
    with pytest.raises(KeyError):
        batcher.params("gone")


def test_a_nan_frame_fails_alone():
    batcher = StreamBatcher(make_pipe())
    batcher.add_stream("ok")
    batcher.add_stream("bad")
    good = batcher.submit("ok", frame(1))
    bad = batcher.submit("bad", np.full((32, 32, 3), np.nan, np.float32))
    assert batcher.step() == 2
    assert good.result(timeout=0).size == (32, 32)
    with pytest.raises(ValueError, match="NaN"):
        bad.result(timeout=0)
    assert batcher.stats("bad")["frames_failed"] == 1


def test_similarity_filter_per_stream():
    pipe = make_pipe()
    batcher = StreamBatcher(pipe)
    batcher.add_stream("still", similarity_filter=True, similarity_threshold=0.99)
    batcher.add_stream("plain")
    image = frame(1)
    results = []
    for _ in range(3):
        futures = [batcher.submit("still", image), batcher.submit("plain", image)]
        batcher.step()
        results.append([f.result(timeout=0) for f in futures])
    assert batcher.stats("still")["frames_skipped"] == 2
    assert batcher.stats("plain")["frames_skipped"] == 0
    assert all(np.array_equal(pixels(r[0]), pixels(results[0][0])) for r in results)


def test_background_thread_serves_concurrent_submitters():
    batcher = StreamBatcher(make_pipe(), max_batch_size=4)
    for i in range(4):
        batcher.add_stream(i, seed=i)
    batcher.start()
    errors, outputs = [], []

    def client(i: int) -> None:
        for k in range(5):
            try:
                outputs.append(batcher.submit(i, frame(10 * i + k)).result(timeout=30))
            except FrameDropped:
                pass
            except Exception as exc:  # noqa: BLE001 - surfaced below
                errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    pending = batcher.submit(0, frame(99))
    batcher.stop()
    assert not errors and len(outputs) == 20
    # the last frame was either served before stop() or dropped by it: never left hanging
    assert pending.done()
    assert sum(batcher.stats(i)["frames_out"] for i in range(4)) >= 20
