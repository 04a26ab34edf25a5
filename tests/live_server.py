"""An app under a real uvicorn on 127.0.0.1 (a free port, held from the start), in a thread: the
same ServerThread a scale replica serves its app with."""
from __future__ import annotations

import socket

import httpx

from livecast.services.scale.server_thread import ServerThread


class LiveServer:
    def __init__(self, app) -> None:
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))  # a free port, held from here on: no race with other runs
        port = self.sock.getsockname()[1]
        self.url, self.ws_url = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}"
        self.thread: ServerThread | None = None

    def start(self):
        self.thread = ServerThread(self.app, self.sock, name="live server", ws_max_size=16 << 20, timeout_s=120)
        return self

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.alive

    def stop(self) -> None:
        self.thread.stop(join_s=30)

    def http(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)


def light_agents() -> dict:
    """ServerSettings fields for tests that do not exercise the agent tools: a fresh store, no
    code-interpreter containers, no embedding model to load."""
    import tempfile

    from livecast.services.agents.config import AgentsConfig
    from livecast.services.retrieval.config import RetrievalConfig
    from livecast.services.sandbox.config import SandboxConfig

    return {"agents": AgentsConfig(data_dir=tempfile.mkdtemp(prefix="livecast-agents-")),
            "sandbox": SandboxConfig(enabled=False), "retrieval": RetrievalConfig(embedding_model="none")}
