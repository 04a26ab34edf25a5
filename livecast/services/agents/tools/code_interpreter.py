"""The `code_interpreter` built-in: the model writes Python as a `code_interpreter(code)` call, the
sandbox pool (`ToolRooms.containers`, services.sandbox) runs it, and the output item is a
`code_interpreter_call` with the code, its container and its logs."""
from __future__ import annotations

import json

from livecast.services.errors import APIError
from livecast.services.sandbox.pool import ContainerNotFound

FUNCTION = {"name": "code_interpreter",
            "description": "Run Python code in a sandbox and read what it prints (stdout and stderr).",
            "parameters": {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}}


class CodeInterpreter:
    type = "code_interpreter"
    id_prefix = "ci"
    function = FUNCTION

    def __init__(self, pool, container_id: str | None, project: str | None) -> None:
        self.pool, self.container_id = pool, container_id  # None: a fresh container on the first call
        self.project = project  # a container of another project is not there for this one

    @classmethod
    def from_spec(cls, tool: dict, rooms) -> "CodeInterpreter":
        pool = rooms.containers
        if pool is None:
            raise APIError(400, "code_interpreter is not enabled on this server", param="tools",
                           code="code_interpreter_disabled")
        container = tool.get("container")
        container = container if isinstance(container, str) else None
        if container is not None:
            try:
                pool.get(container, project=rooms.project)
            except ContainerNotFound as exc:
                raise APIError(404, exc.args[0], param="tools.container", code="not_found") from None
        return cls(pool, container, rooms.project)

    async def start_item(self, item_id: str, arguments: str) -> dict:
        try:
            code = json.loads(arguments).get("code", "")
        except (ValueError, AttributeError):
            code = ""
        if self.container_id is None:  # "auto": the container exists before the call item is shown
            self.container_id = (await self.pool.create(name="auto", project=self.project))["id"]
        return {"id": item_id, "type": "code_interpreter_call", "status": "in_progress", "code": code,
                "container_id": self.container_id, "outputs": None}

    def progress(self, item: dict) -> list[tuple[str, dict]]:
        return [("response.code_interpreter_call_code.delta", {"delta": item["code"]}),
                ("response.code_interpreter_call_code.done", {"code": item["code"]}),
                ("response.code_interpreter_call.interpreting", {})]

    def annotations(self, text: str) -> list[dict]:
        return []

    async def call(self, item: dict) -> dict:
        result = await self.pool.run(self.container_id, item["code"], project=self.project)
        self.container_id = result.container_id  # later calls in this run share the container
        logs = result.stdout + result.stderr
        outputs = [{"type": "logs", "logs": logs}] + [
            {"type": "image", "url": f"/v1/containers/{result.container_id}/files/{f.id}/content"}
            for f in result.images]
        if result.timed_out or result.limit:
            outputs[0]["logs"] += f"\n[stopped: {'timed out' if result.timed_out else result.limit}]"
        return {**item, "status": "completed" if result.exit_code == 0 and not result.timed_out else "failed",
                "container_id": result.container_id, "outputs": outputs}
