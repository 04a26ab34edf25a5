"""The Containers API over real HTTP (uvicorn on 127.0.0.1) with the official `openai` client."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import httpx
import openai
import pytest
from fastapi import FastAPI

from livecast.services.sandbox import routes
from livecast.services.sandbox.config import SandboxConfig
from livecast.services.sandbox.service import containers_service
from livecast.services.auth import APIKeyGuard
from livecast.services.errors import install_error_handlers
from tests.sandbox.conftest import TEST_CONFIG
from tests.live_server import LiveServer


def _app(enabled: bool) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if not enabled:
            yield
            return
        async with containers_service(SandboxConfig(**{**TEST_CONFIG, "max_containers": 4}, unsafe=True)) as pool:
            app.state.containers = pool
            yield
            app.state.containers = None

    app = FastAPI(lifespan=lifespan)
    app.state.containers = None
    install_error_handlers(app)
    app.add_middleware(APIKeyGuard, keys={})  # as the app has it: every request in project `default`
    app.include_router(routes.router)
    return app


@pytest.fixture(scope="module")
def server():
    live = LiveServer(_app(enabled=True)).start()
    yield live
    live.stop()


def test_containers_and_files_through_the_openai_client(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    created = client.containers.create(name="analysis", expires_after={"anchor": "last_active_at", "minutes": 5})
    assert created.id.startswith("cntr_") and created.name == "analysis" and created.status == "running"
    assert client.containers.retrieve(created.id).id == created.id
    assert created.id in [c.id for c in client.containers.list()]

    uploaded = client.containers.files.create(created.id, file=("data.csv", b"x,y\n1,2\n"))
    assert uploaded.path == "/mnt/data/data.csv" and uploaded.bytes == 8 and uploaded.source == "user"
    assert [f.id for f in client.containers.files.list(created.id)] == [uploaded.id]
    assert client.containers.files.retrieve(uploaded.id, container_id=created.id).path == uploaded.path
    content = client.containers.files.content.retrieve(uploaded.id, container_id=created.id)
    assert content.read() == b"x,y\n1,2\n"
    client.containers.files.delete(uploaded.id, container_id=created.id)
    assert list(client.containers.files.list(created.id)) == []

    deleted = client.containers.delete(created.id)
    assert deleted is None or getattr(deleted, "deleted", True)
    with pytest.raises(openai.NotFoundError) as info:
        client.containers.retrieve(created.id)
    assert info.value.body["code"] == "not_found"  # OpenAI's error shape


def test_bad_requests_name_their_parameter(server):
    with httpx.Client(base_url=server.url) as http:
        bad = http.post("/v1/containers", json={"name": "x", "file_ids": ["file-1"]})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "file_ids"
        bad = http.post("/v1/containers", json={"expires_after": {"anchor": "last_active_at", "minutes": 0}})
        assert bad.status_code == 400 and "minutes" in bad.json()["error"]["param"]
        missing = http.get("/v1/containers/cntr_nope/files")
        assert missing.status_code == 404 and missing.json()["error"]["type"] == "invalid_request_error"


def _run_in(server, container_id: str, code: str):
    """A call in a container of the live server, as the run loop makes it (blocking, from this thread)."""
    return server.app.state.containers.container(container_id).run(textwrap.dedent(code), 20.0)


def test_a_deep_directory_tree_does_not_break_the_container(server):
    """Finding 5: 1,200 nested directories made every later call, the file listing and DELETE fail
    (RecursionError in os.walk and shutil.rmtree), and DELETE left the directories on disk."""
    with server.http() as http:
        cid = http.post("/v1/containers", json={"name": "deep"}).json()["id"]
        directory = server.app.state.containers.container(cid).directory
        result = _run_in(server, cid, """
            import os
            for _ in range(1200):
                os.mkdir('d'); os.chdir('d')
            open('deep.txt', 'w').write('x')
            os.chdir('/mnt/data')
            open('top.txt', 'w').write('y')
        """)
        assert result.exit_code == 0 and "stopped early" in result.stderr, result.stderr
        assert [f.path for f in result.files] == ["/mnt/data/top.txt"]
        assert _run_in(server, cid, "print('alive')").stdout == "alive\n"
        listing = http.get(f"/v1/containers/{cid}/files")
        assert listing.status_code == 200, listing.text
        assert [f["path"] for f in listing.json()["data"]] == ["/mnt/data/top.txt"]
        deleted = http.delete(f"/v1/containers/{cid}")
        assert deleted.status_code == 200, deleted.text
        assert not directory.exists()
        assert http.get(f"/v1/containers/{cid}").status_code == 404


def test_a_file_name_that_is_not_utf8_is_listed(server):
    """Finding 9: a file named with bytes that are not UTF-8 made GET …/files a 500 until renamed."""
    with server.http() as http:
        cid = http.post("/v1/containers", json={"name": "latin1"}).json()["id"]
        try:
            result = _run_in(server, cid, "open(b'caf\\xe9.txt', 'wb').write(b'latin-1 name')")
            assert result.exit_code == 0, result.stderr
            assert [f.path for f in result.files] == ["/mnt/data/caf\ufffd.txt"]
            listing = http.get(f"/v1/containers/{cid}/files")
            assert listing.status_code == 200, listing.text
            [file] = listing.json()["data"]
            assert file["path"] == "/mnt/data/caf\ufffd.txt" and file["bytes"] == 12
            content = http.get(f"/v1/containers/{cid}/files/{file['id']}/content")
            assert content.status_code == 200 and content.content == b"latin-1 name"
            assert http.delete(f"/v1/containers/{cid}/files/{file['id']}").status_code == 200
            assert _run_in(server, cid, "import os; os.listdir(b'.')").stdout == "[]\n"
        finally:
            http.delete(f"/v1/containers/{cid}")


def test_concurrent_deletes_of_one_file_give_one_200_and_404s(server):
    """Finding 10: 8 concurrent DELETEs of one container file gave 500s (FileNotFoundError)."""
    with server.http() as http:
        cid = http.post("/v1/containers", json={"name": "race"}).json()["id"]
        try:
            clients = [server.http() for _ in range(8)]
            for client in clients:
                assert client.get(f"/v1/containers/{cid}").status_code == 200  # connected before the race
            for round_ in range(3):
                fid = http.post(f"/v1/containers/{cid}/files", files={"file": ("f.txt", b"x")}).json()["id"]
                start = threading.Barrier(8)

                def delete(client):
                    start.wait()
                    return client.delete(f"/v1/containers/{cid}/files/{fid}").status_code

                with ThreadPoolExecutor(8) as workers:
                    codes = sorted(workers.map(delete, clients))
                assert codes == [200] + [404] * 7, (round_, codes)
            for client in clients:
                client.close()
        finally:
            http.delete(f"/v1/containers/{cid}")


def test_disabled_interpreter_answers_503():
    live = LiveServer(_app(enabled=False)).start()
    try:
        with httpx.Client(base_url=live.url) as http:
            response = http.get("/v1/containers")
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "code_interpreter_disabled"
    finally:
        live.stop()


def _cli(args: list[str], code: str) -> tuple[int, dict]:
    done = subprocess.run([sys.executable, "-m", "livecast.services.sandbox.cli", *args], input=code,
                          capture_output=True, text=True, timeout=60)
    return done.returncode, json.loads(done.stdout) if done.stdout else {"stderr": done.stderr}


def test_cli_run_prints_one_json_object():
    rc, out = _cli(["run", "-"], "import numpy\nopen('a.txt', 'w').write('hi')\nprint('done')\n")
    assert rc == 0 and out["stdout"] == "done\n" and out["exit_code"] == 0 and out["limit"] is None
    assert out["files"] == ["/mnt/data/a.txt"] and out["timed_out"] is False
    rc, out = _cli(["run", "-", "--timeout", "1"], "import time\ntime.sleep(30)\n")
    assert rc == 0 and out["timed_out"] is True and out["limit"] == "timeout"  # the snippet failed, the sandbox did not
    rc, out = _cli(["run", "-", "--memory-mb", "256"], "x = bytearray(512 << 20)\n")
    assert rc == 0 and out["limit"] == "memory" and out["exit_code"] == 1


def test_cli_probe_reports_the_limits_in_force():
    done = subprocess.run([sys.executable, "-m", "livecast.services.sandbox.cli", "probe"], capture_output=True,
                          text=True, timeout=60)
    limits = json.loads(done.stdout)["limits"]
    assert limits["oom_score_adj"]["sandbox"] == 1000 and limits["oom_score_adj"]["server"] < 1000
    assert limits["per_container"]["disk_covers"] == ["/mnt/data", "$TMPDIR"]
    assert limits["per_process"]["memory_mb"] == SandboxConfig().memory_mb
    # a cgroup per container where this host allows one (this VM: v1, and why not v2), else null and why
    assert limits["cgroup"] is None and limits["cgroup_note"] or limits["cgroup"]["memory_mb"] == SandboxConfig().memory_mb


def test_probe_reports_every_layer(support):
    """This CI kernel (6.x, root in a VM) has all three layers; a kernel without one must say so."""
    assert support.missing == (), support.describe()  # the sandbox's own root included (pivot_root works here)
    assert support.landlock_abi >= 1 and "ABI" in support.describe()
