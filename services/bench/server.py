"""Start `livecast serve` in its own process for a benchmark, wait for /health, stop it after."""
from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time

import httpx


def start_server(serve_args: list[str], timeout_s: float = 300) -> tuple[subprocess.Popen, str]:
    """`livecast serve <serve_args>` on a free 127.0.0.1 port; returns (process, base url)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "services.cli", "serve", "--port", str(port), *serve_args]
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
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
    raise RuntimeError(f"the server did not start:\n{log.read().decode(errors='replace')[-2000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
