"""An app under a real uvicorn on 127.0.0.1 (a free port, held from the start), in a thread."""
from __future__ import annotations

import socket
import threading
import time

import httpx
import uvicorn


class LiveServer:
    def __init__(self, app) -> None:
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))  # a free port, held from here on: no race with other runs
        port = self.sock.getsockname()[1]
        self.url, self.ws_url = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=3))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self):
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()

    def http(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)


def light_agents() -> dict:
    """ServerSettings fields for tests that do not exercise the agent tools: a fresh store, no
    code-interpreter containers, no embedding model to load."""
    import tempfile

    from livecast.services.agents.config import AgentsConfig
    from livecast.services.retrieval.config import RetrievalConfig
    from livecast.services.sandbox.service import SandboxConfig

    return {"agents": AgentsConfig(data_dir=tempfile.mkdtemp(prefix="livecast-agents-")),
            "sandbox": SandboxConfig(enabled=False), "retrieval": RetrievalConfig(embedding_model="none")}
