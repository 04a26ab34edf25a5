"""Video frames out of the RTP jitter buffer as soon as they are complete.

aiortc's receiver hands a video frame to its decoder only when the first packet of the *next*
frame arrives, so every received frame waits one frame interval: 50 ms at 20 fps in, and on a
client watching a 6 fps co-hosted stream, 170 ms out. Browsers do not wait: the sender sets the
RTP marker bit on the last packet of each frame (RFC 7741 for VP8, RFC 6184 for H.264) and a frame
whose packets run without a gap from the first to the marked one is complete. `MarkerJitterBuffer`
adds that rule and keeps aiortc's own (a timestamp change also ends a frame, for senders that
never mark); `reassemble_on_marker()` makes this process's receivers use it.
"""
from __future__ import annotations

import aiortc.rtcrtpreceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame

_STOCK = JitterBuffer


class MarkerJitterBuffer(JitterBuffer):
    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        if not self._is_video:
            return super()._remove_frame(sequence_number)
        packets = []
        for count in range(self.capacity):
            packet = self._packets[(self._origin + count) % self._capacity]
            if packet is None:
                return None  # a gap: the frame is not complete yet
            if packets and packet.timestamp != packets[0].timestamp:
                return self._pop(packets, count)  # the next frame began: this one ended unmarked
            packets.append(packet)
            if packet.marker:
                return self._pop(packets, count + 1)
        return None

    def _pop(self, packets: list, count: int) -> JitterFrame:
        self.remove(count)
        return JitterFrame(data=b"".join(p._data for p in packets), timestamp=packets[0].timestamp)


def reassemble_on_marker(enabled: bool = True) -> None:
    """Process-wide: aiortc looks `JitterBuffer` up each time it builds a receiver."""
    aiortc.rtcrtpreceiver.JitterBuffer = MarkerJitterBuffer if enabled else _STOCK
