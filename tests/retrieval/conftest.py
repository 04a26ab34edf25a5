"""A FastAPI app with only the retrieval router and lifespan, under a real uvicorn on 127.0.0.1.

The tests that take `live` run twice: with the store in SQLite and in a real PostgreSQL server."""
from __future__ import annotations

import time
from contextlib import asynccontextmanager
from pathlib import Path

import openai
import pytest
from fastapi import FastAPI

from livecast.services.agents.db import open_database
from livecast.services import retrieval as retrieval_package
from livecast.services.retrieval.routes import router
from livecast.services.retrieval.config import RetrievalConfig
from livecast.services.retrieval.service import retrieval_service
from livecast.services.auth import APIKeyGuard
from livecast.services.errors import install_error_handlers
from tests.live_server import LiveServer

EVAL_DIR = Path(retrieval_package.__file__).resolve().parent / "eval"
MAX_FILE_BYTES = 256 * 1024  # small, so the 413 test uploads little


def make_app(data_dir: Path, store_url: str = "") -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        db = open_database(store_url, data_dir)
        config = RetrievalConfig(data_dir=str(data_dir), max_file_bytes=MAX_FILE_BYTES)
        async with retrieval_service(config, db) as service:
            app.state.retrieval = service
            yield
        db.close()

    app = FastAPI(lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(APIKeyGuard, keys={})  # as the app has it: every request in project `default`
    app.include_router(router)
    return app


class Running:
    def __init__(self, data_dir: Path, store_url: str = "") -> None:
        self.data_dir = data_dir
        self.server = LiveServer(make_app(data_dir, store_url)).start()
        self.client = openai.OpenAI(base_url=self.server.url + "/v1", api_key="test", max_retries=0)

    @property
    def service(self):
        return self.server.app.state.retrieval

    def wait_idle(self, store_id: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while self.client.vector_stores.retrieve(store_id).file_counts.in_progress:
            assert time.monotonic() < deadline, "ingestion did not finish"
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture(scope="package")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("retrieval-data")


# tests of `live` that never reach the store: their PostgreSQL run would only repeat the SQLite one
STORE_FREE = {"test_embeddings_shapes_formats_and_dimensions", "test_embeddings_bad_input_is_a_clear_400",
              "test_embeddings_match_sentence_transformers"}


def pytest_collection_modifyitems(config, items):
    repeats = [i for i in items if "[postgresql" in i.name and i.originalname in STORE_FREE]
    if repeats:
        config.hook.pytest_deselected(items=repeats)
        items[:] = [i for i in items if i not in repeats]


@pytest.fixture(scope="package", params=["sqlite", "postgresql"])
def live(request, data_dir):
    if request.param == "sqlite":
        running = Running(data_dir)
    else:  # its own files folder, so file counts stay per backend
        running = Running(data_dir / "postgresql", request.getfixturevalue("postgres").new_database())
    yield running
    running.stop()


@pytest.fixture(scope="package")
def eval_store(live):
    """The shipped evaluation corpus uploaded and indexed once: (store id, {filename: file id})."""
    ids = {}
    for path in sorted((EVAL_DIR / "docs").iterdir()):
        ids[path.name] = live.client.files.create(file=(path.name, path.read_bytes()), purpose="assistants").id
    batch = live.client.vector_stores.file_batches.create(vector_store_id=live.client.vector_stores.create(
        name="eval").id, file_ids=list(ids.values()))
    live.wait_idle(batch.vector_store_id)
    return batch.vector_store_id, ids


def tiny_pdf(text: str) -> bytes:
    """A one-page PDF showing `text` in Helvetica, with a correct cross-reference table."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
               b"/Resources << /Font << /F1 5 0 R >> >> >>",
               b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)
