"""`/v1/files`: upload, list, get, delete and content. Handlers validate, call the service and
shape replies."""
from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.datastructures import UploadFile

from livecast.services.errors import APIError
from livecast.services.retrieval.deps import get_retrieval
from livecast.services.retrieval.file_store import PURPOSES, file_object
from livecast.services.retrieval.pagination import list_object

router = APIRouter()
COPY_PIECE_BYTES = 1 << 20
MULTIPART_SLACK_BYTES = 64 * 1024  # boundaries and form fields around the file's bytes


# -- files ----------------------------------------------------------------------------------------
@router.post("/v1/files")
async def upload_file(request: Request):
    service = get_retrieval(request)
    cap = service.config.max_file_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap + MULTIPART_SLACK_BYTES:
        raise APIError(413, f"file is larger than this server's limit of {cap} bytes", param="file",
                       code="file_too_large")
    form = await request.form()
    upload, purpose = form.get("file"), form.get("purpose")
    if not isinstance(upload, UploadFile):
        raise APIError(400, "file: a multipart file field named 'file' is required", param="file")
    if purpose not in PURPOSES:
        raise APIError(400, f"purpose must be one of {list(PURPOSES)}, not {purpose!r}", param="purpose")
    expires_after = None
    if form.get("expires_after[seconds]") is not None:
        seconds = str(form.get("expires_after[seconds]"))
        if form.get("expires_after[anchor]") != "created_at" or not seconds.isdigit() \
                or not 3600 <= int(seconds) <= 30 * 86400:
            raise APIError(400, "expires_after must be anchor 'created_at' with seconds in 3600..2592000",
                           param="expires_after")
        expires_after = {"seconds": int(seconds)}
    filename = (upload.filename or "upload").replace("/", "_").replace("\\", "_")[:255]
    file_id, part = service.files.begin()
    try:
        size = await asyncio.to_thread(_copy_capped, upload.file, part, cap)
        if size is None:
            raise APIError(413, f"file is larger than this server's limit of {cap} bytes", param="file",
                           code="file_too_large")
        row = await asyncio.to_thread(service.files.commit, file_id, part, filename, purpose, expires_after)
    finally:
        part.unlink(missing_ok=True)
        await upload.close()
    return file_object(row)


def _copy_capped(source, target, cap: int) -> int | None:
    """Copy to `target`; None (and nothing kept) once more than `cap` bytes arrive."""
    size = 0
    with open(target, "wb") as out:
        while piece := source.read(COPY_PIECE_BYTES):
            size += len(piece)
            if size > cap:
                return None
            out.write(piece)
    return size


@router.get("/v1/files")
async def list_files(request: Request, purpose: str | None = None, after: str | None = None, limit: int = 10000,
                     order: Literal["asc", "desc"] = "desc"):
    rows, more = get_retrieval(request).files.list(purpose, after, limit, order)
    return list_object([file_object(r) for r in rows], more)


@router.get("/v1/files/{file_id}")
async def get_file(request: Request, file_id: str):
    return file_object(get_retrieval(request).files.get(file_id))


@router.delete("/v1/files/{file_id}")
async def delete_file(request: Request, file_id: str):
    await asyncio.to_thread(get_retrieval(request).delete_file, file_id)
    return {"id": file_id, "object": "file", "deleted": True}


@router.get("/v1/files/{file_id}/content")
async def file_content(request: Request, file_id: str):
    data = await asyncio.to_thread(get_retrieval(request).files.read, file_id)
    return Response(data, media_type="application/octet-stream")
