"""Files, vector stores (their files, batches, search) and containers (their files) against OpenAI's
document, strictly."""
from __future__ import annotations

import time

import pytest

TIDES = b"Tides are the rise and fall of sea levels, caused by the pull of the Moon and the Sun."
BREAD = b"Sourdough bread rises because wild yeast ferments the dough."


def _wait(api, path: str, done) -> dict:
    deadline = time.monotonic() + 180  # polls unchecked; the settled body is checked
    while not done(body := api.http.get(path).json()):
        assert time.monotonic() < deadline, body
        time.sleep(0.05)
    return api.get(path)


@pytest.fixture(scope="module")
def file_ids(api):
    return [api.upload("/v1/files", {"file": (name, data)}, {"purpose": "assistants"})["id"]
            for name, data in (("tides.txt", TIDES), ("bread.txt", BREAD))]


def test_files(api, file_ids):
    listed = api.get("/v1/files")
    assert {f["id"] for f in listed["data"]} >= set(file_ids)
    assert api.get(f"/v1/files/{file_ids[0]}")["filename"] == "tides.txt"
    assert api.get(f"/v1/files/{file_ids[0]}/content").content == TIDES
    expiring = api.upload("/v1/files", {"file": ("x.txt", b"x")},
                          {"purpose": "assistants", "expires_after[anchor]": "created_at",
                           "expires_after[seconds]": "3600"})
    assert expiring["expires_at"] == expiring["created_at"] + 3600
    assert api.delete(f"/v1/files/{expiring['id']}")["deleted"] is True


def test_vector_stores_files_batches_and_search(api, file_ids):
    store = api.post("/v1/vector_stores", {"name": "docs", "metadata": {"k": "v"}})
    path = f"/v1/vector_stores/{store['id']}"
    api.post(f"{path}/files", {"file_id": file_ids[0], "attributes": {"topic": "ocean"}})
    _wait(api, f"{path}/files/{file_ids[0]}", lambda f: f["status"] == "completed")
    api.get(f"{path}/files")
    api.get(f"{path}/files/{file_ids[0]}/content")
    api.post(f"{path}/files/{file_ids[0]}", {"attributes": {"topic": "sea"}})
    batch = api.post(f"{path}/file_batches", {"file_ids": [file_ids[1]]})
    _wait(api, f"{path}/file_batches/{batch['id']}", lambda b: b["status"] == "completed")
    api.get(f"{path}/file_batches/{batch['id']}/files")
    api.post(f"{path}/file_batches/{batch['id']}/cancel")
    hits = api.post(f"{path}/search", {"query": "what moves the sea?", "max_num_results": 2})
    assert hits["data"] and hits["data"][0]["file_id"] in file_ids
    api.post(f"{path}/search", {"query": "tides", "filters": {"type": "eq", "key": "topic", "value": "sea"}})
    api.get(path)
    api.get("/v1/vector_stores")
    api.post(path, {"name": "renamed", "expires_after": {"anchor": "last_active_at", "days": 2}})
    api.delete(f"{path}/files/{file_ids[1]}")
    assert api.delete(path)["deleted"] is True


def test_containers_and_their_files(api):
    container = api.post("/v1/containers", {"name": "scratch"})
    path = f"/v1/containers/{container['id']}"
    assert api.get(f"{path}/files")["data"] == []  # an empty list: no first_id to give
    api.get("/v1/containers")
    api.get(path)
    uploaded = api.upload(f"{path}/files", {"file": ("data.csv", b"a,b\n1,2\n")})
    assert api.get(f"{path}/files")["first_id"] == uploaded["id"]
    api.get(f"{path}/files/{uploaded['id']}")
    assert api.get(f"{path}/files/{uploaded['id']}/content").content == b"a,b\n1,2\n"
    api.delete(f"{path}/files/{uploaded['id']}")  # the document gives both deletes an empty 200
    api.delete(path)
