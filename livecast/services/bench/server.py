"""Start `livecast serve` (or a peer server) in its own process for a benchmark, wait for /health, stop it after."""
from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(serve_args: list[str], timeout_s: float = 300) -> tuple[subprocess.Popen, str]:
    """`livecast serve <serve_args>` on a free 127.0.0.1 port; returns (process, base url)."""
    port = free_port()
    return start_process([sys.executable, "-m", "livecast.services.cli", "serve", "--port", str(port), *serve_args],
                         f"http://127.0.0.1:{port}", timeout_s)


def start_process(cmd: list[str], url: str, timeout_s: float, cwd: str | None = None) -> tuple[subprocess.Popen, str]:
    """Run `cmd`, a server, until `url`/health answers 200; its output goes to a temp file shown on failure."""
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    log.seek(0)
    raise RuntimeError(f"the server did not start ({' '.join(cmd)}):\n{log.read().decode(errors='replace')[-2000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
