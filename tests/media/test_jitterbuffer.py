"""The marker-aware jitter buffer: a video frame leaves as soon as its marked last packet is in."""
from __future__ import annotations

import aiortc.rtcrtpreceiver
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from livecast.services.media.jitterbuffer import MarkerJitterBuffer, reassemble_on_marker


def packet(seq: int, timestamp: int, marker: bool = False) -> RtpPacket:
    p = RtpPacket(sequence_number=seq, timestamp=timestamp, marker=int(marker))
    p._data = bytes([seq % 256])
    return p


def feed(buffer, packets):
    return [(p.sequence_number, frame.data if frame else None)
            for p in packets for _, frame in [buffer.add(p)]]


def test_a_marked_frame_leaves_with_its_last_packet():
    buffer = MarkerJitterBuffer(capacity=128, is_video=True)
    out = feed(buffer, [packet(10, 900), packet(11, 900), packet(12, 900, marker=True), packet(13, 1800, marker=True)])
    assert out == [(10, None), (11, None), (12, b"\x0a\x0b\x0c"), (13, b"\x0d")]
    # aiortc's stock buffer holds each frame until the next one starts
    stock = JitterBuffer(capacity=128, is_video=True)
    out = feed(stock, [packet(10, 900), packet(11, 900), packet(12, 900, marker=True), packet(13, 1800, marker=True)])
    assert out == [(10, None), (11, None), (12, None), (13, b"\x0a\x0b\x0c")]


def test_a_gap_holds_the_frame_until_the_missing_packet_arrives():
    buffer = MarkerJitterBuffer(capacity=128, is_video=True)
    out = feed(buffer, [packet(20, 900), packet(22, 900, marker=True), packet(21, 900)])
    assert out == [(20, None), (22, None), (21, b"\x14\x15\x16")]


def test_unmarked_frames_still_end_when_the_next_one_starts():
    buffer = MarkerJitterBuffer(capacity=128, is_video=True)
    out = feed(buffer, [packet(5, 100), packet(6, 100), packet(7, 200), packet(8, 300)])
    assert out == [(5, None), (6, None), (7, b"\x05\x06"), (8, b"\x07")]


def test_audio_keeps_the_stock_prefetch_rule():
    ours, stock = MarkerJitterBuffer(capacity=16, prefetch=4), JitterBuffer(capacity=16, prefetch=4)
    packets = [packet(i, 160 * i, marker=True) for i in range(8)]
    assert feed(ours, packets) == feed(stock, packets)


def test_reassemble_on_marker_swaps_the_receivers_buffer_and_back():
    before = aiortc.rtcrtpreceiver.JitterBuffer
    try:
        reassemble_on_marker(False)
        assert aiortc.rtcrtpreceiver.JitterBuffer is JitterBuffer
        reassemble_on_marker()
        assert aiortc.rtcrtpreceiver.JitterBuffer is MarkerJitterBuffer
    finally:
        aiortc.rtcrtpreceiver.JitterBuffer = before
