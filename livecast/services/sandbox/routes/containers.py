"""The Containers API, in OpenAI's shapes: /v1/containers and /v1/containers/{id}/files.

The pool lives on `app.state.containers` (set by the lifespan from `containers_service`); when it
is None — the tool refused to start, or is switched off — every route answers 503. Every route
passes the request's project: another project's container is "not found" (services.projects).
"""
from __future__ import annotations

from typing import Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from livecast.services.sandbox.deps import get_pool
from livecast.services.sandbox.pool import ContainerNotFound, ContainerPool, DeleteFailed, PoolFull
from livecast.services.errors import APIError
from livecast.services.projects import Project

router = APIRouter()
_MAX_UPLOAD_BYTES = 512 << 20  # the multipart parser spools to disk; the container's own limit is checked after


class ExpiresAfter(BaseModel):
    anchor: Literal["last_active_at"] = "last_active_at"
    minutes: int = Field(ge=1, le=1440)


class CreateContainer(BaseModel):
    name: str = Field(default="", max_length=256)
    expires_after: ExpiresAfter | None = None
    file_ids: list[str] = Field(default_factory=list)
    memory_limit: str | None = None


def _not_found(exc: ContainerNotFound) -> APIError:
    return APIError(404, exc.args[0] if exc.args else "not found", code="not_found")


def _page(items: list[dict], limit: int, order: str, after: str | None) -> dict:
    items = items if order == "asc" else list(reversed(items))
    if after:  # "" is the last_id of an empty page: no cursor
        ids = [item["id"] for item in items]
        if after not in ids:
            raise APIError(400, f"after: no item {after!r} in this list", param="after")
        items = items[ids.index(after) + 1:]
    page = items[:limit]
    # OpenAI's document requires both ids as strings, null not allowed: "" on an empty page
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else "",
            "last_id": page[-1]["id"] if page else "", "has_more": len(items) > limit}


@router.post("/v1/containers")
async def create_container(body: CreateContainer, project: Project, pool: ContainerPool = Depends(get_pool)):
    if body.file_ids:
        raise APIError(400, "file_ids: copying Files API files into a container is not supported yet; "
                       "upload them to /v1/containers/{id}/files", param="file_ids")
    if body.memory_limit is not None:
        raise APIError(400, "memory_limit: this server sets one memory limit for every container (--sandbox-memory-mb)",
                       param="memory_limit")
    minutes = body.expires_after.minutes if body.expires_after else None
    try:
        return await pool.create(body.name, idle_expiry_s=minutes * 60.0 if minutes else None, project=project)
    except PoolFull as exc:
        raise APIError(429, str(exc), code="too_many_containers") from None


@router.get("/v1/containers")
async def list_containers(project: Project, limit: int = Query(20, ge=1, le=100),
                          order: Literal["asc", "desc"] = "desc", after: str | None = None,
                          pool: ContainerPool = Depends(get_pool)):
    return _page(pool.list(project=project), limit, order, after)


@router.get("/v1/containers/{container_id}")
async def retrieve_container(container_id: str, project: Project, pool: ContainerPool = Depends(get_pool)):
    try:
        return pool.get(container_id, project=project)
    except ContainerNotFound as exc:
        raise _not_found(exc) from None


@router.delete("/v1/containers/{container_id}")
async def delete_container(container_id: str, project: Project, pool: ContainerPool = Depends(get_pool)):
    try:
        await pool.delete(container_id, project=project)
    except ContainerNotFound as exc:
        raise _not_found(exc) from None
    except DeleteFailed as exc:
        raise APIError(500, str(exc), code="container_delete_failed") from None
    return {"id": container_id, "object": "container.deleted", "deleted": True}


@router.post("/v1/containers/{container_id}/files")
async def create_container_file(container_id: str, request: Request, project: Project,
                                pool: ContainerPool = Depends(get_pool)):
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise APIError(400, "file: send the file as multipart/form-data (copying a file_id is not supported yet)",
                       param="file")
    form = await request.form(max_part_size=_MAX_UPLOAD_BYTES)
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise APIError(400, "file: a multipart field named 'file' is required", param="file")
    data = await upload.read()
    try:
        file = await pool.upload(container_id, upload.filename or "", data, project=project)
    except ContainerNotFound as exc:
        raise _not_found(exc) from None
    except ValueError as exc:
        raise APIError(400, f"file: {exc}", param="file") from None
    return file.to_openai(container_id)


@router.get("/v1/containers/{container_id}/files")
async def list_container_files(container_id: str, project: Project, limit: int = Query(20, ge=1, le=100),
                               order: Literal["asc", "desc"] = "desc", after: str | None = None,
                               pool: ContainerPool = Depends(get_pool)):
    try:
        files = await pool.list_files(container_id, project=project)
    except ContainerNotFound as exc:
        raise _not_found(exc) from None
    return _page([f.to_openai(container_id) for f in files], limit, order, after)


@router.get("/v1/containers/{container_id}/files/{file_id}")
async def retrieve_container_file(container_id: str, file_id: str, project: Project,
                                  pool: ContainerPool = Depends(get_pool)):
    try:
        return (await pool.file(container_id, file_id, project=project)).to_openai(container_id)
    except ContainerNotFound as exc:
        raise _not_found(exc) from None


@router.get("/v1/containers/{container_id}/files/{file_id}/content")
async def container_file_content(container_id: str, file_id: str, project: Project,
                                 pool: ContainerPool = Depends(get_pool)):
    try:
        file, data = await pool.read_file(container_id, file_id, project=project)
    except ContainerNotFound as exc:
        raise _not_found(exc) from None
    except (OSError, ValueError) as exc:
        raise APIError(400, f"file {file_id} cannot be read: {exc}", param="file_id") from None
    return Response(data, media_type="application/octet-stream",
                    headers={"Content-Disposition": f"attachment; filename*=UTF-8''{quote(file.name)}"})


@router.delete("/v1/containers/{container_id}/files/{file_id}")
async def delete_container_file(container_id: str, file_id: str, project: Project,
                                pool: ContainerPool = Depends(get_pool)):
    try:
        await pool.delete_file(container_id, file_id, project=project)
    except ContainerNotFound as exc:
        raise _not_found(exc) from None
    return {"id": file_id, "object": "container.file.deleted", "deleted": True}
