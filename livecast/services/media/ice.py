"""Which addresses WebRTC media may use. aiortc offers every non-loopback interface as an ICE host
candidate; `use_loopback_only()` makes this process offer 127.0.0.1 alone, so media between the
server and a client on the same machine (tests, benchmarks, `--ice-loopback`) stays on the
loopback device. Chromium needs `--allow-loopback-in-peer-connection` to pair with it."""
from __future__ import annotations

import aioice.ice

_ALL_INTERFACES = aioice.ice.get_host_addresses


def _loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    return ["127.0.0.1"] if use_ipv4 else []


def use_loopback_only(enabled: bool = True) -> None:
    """Process-wide: aioice looks this function up each time it gathers candidates."""
    aioice.ice.get_host_addresses = _loopback if enabled else _ALL_INTERFACES
