"""An ASGI app served by uvicorn on an already-bound socket, in a daemon thread of this process:
how a replica serves its app and how the scaled `livecast serve` serves the ingress."""
from __future__ import annotations

import socket
import threading
import time

import uvicorn


class ServerThread:
    def __init__(self, app, sock: socket.socket, *, name: str, ws_max_size: int, timeout_s: float) -> None:
        """Start serving `app` on `sock` (bound by the caller, so no other process can take the
        port first) and return once uvicorn has started, i.e. the app's lifespan has run;
        RuntimeError naming `name` if it died or took longer than `timeout_s`."""
        self.sock = sock
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5,
                                                    ws_max_size=ws_max_size))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, name=name, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{name}: the server did not start")
            time.sleep(0.05)

    @property
    def alive(self) -> bool:
        return self.thread.is_alive() and not self.server.should_exit

    def stop(self, join_s: float = 15) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=join_s)
        self.sock.close()
