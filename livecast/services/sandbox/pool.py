"""The live containers of one server: bounded, least-recently-used evicted, expired when idle.

This is the API the Responses/Assistants run loop calls:

    result = await pool.run(container_id_or_None, code, timeout_s)   # -> ExecResult

`None` creates a container ("auto"); `result.container_id` names it for the next call. Each
container belongs to a project (services.projects): a call that names one passes `project=` and
finds only its own project's containers (another's is "not found"; None: any, for tests and
diagnostics). Every
blocking step (spawning, pipe waits, directory scans, kills) runs in a worker thread, never on
the event loop; one call at a time per container.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from pathlib import Path

from livecast.services.sandbox.container import Container, ContainerSpec, ExecResult, pick_uid
from livecast.services.sandbox.files import ContainerFile

logger = logging.getLogger("livecast.sandbox")


class ContainerNotFound(KeyError):
    pass


class PoolFull(RuntimeError):
    """Every live container is running a call; none can be evicted."""


class DeleteFailed(RuntimeError):
    """A container's processes are gone but its files could not all be removed: it stays listed
    (a later DELETE retries), so the API never reports as deleted what is still on disk."""


class Entry:
    __slots__ = ("container", "name", "idle_expiry_s", "lock", "project")

    def __init__(self, container: Container, name: str, idle_expiry_s: float, project: str | None) -> None:
        self.container, self.name, self.idle_expiry_s = container, name, idle_expiry_s
        self.project = project
        self.lock = asyncio.Lock()

    def to_openai(self) -> dict:
        c = self.container
        return {"id": c.id, "object": "container", "created_at": int(c.created_at), "status": "running",
                "expires_after": {"anchor": "last_active_at", "minutes": round(self.idle_expiry_s / 60, 2)},
                "last_active_at": int(c.last_active_at), "name": self.name}


class ContainerPool:
    def __init__(self, spec: ContainerSpec, root_dir: str, *, max_containers: int, idle_expiry_s: float,
                 timeout_s: float, spares: int, uid_base: int, limits: dict | None = None) -> None:
        self.spec, self.root = spec, Path(root_dir)
        self.limits = limits or {}  # what bounds a container (service.limits_in_force), for /health
        self.max_containers, self.idle_expiry_s, self.timeout_s = max_containers, idle_expiry_s, timeout_s
        self.uid_base = uid_base
        self.entries: dict[str, Entry] = {}  # insertion order = least recently used first
        self._spares: asyncio.Queue[Container] = asyncio.Queue()
        self._spare_slots = asyncio.Semaphore(spares)  # a slot is freed when a spare is claimed
        self._num_spares = spares
        self._tasks: list[asyncio.Task] = []
        self._starting: set[asyncio.Future] = set()  # spawns in worker threads, awaited on close

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._reap_idle()))
        if self._num_spares:
            self._tasks.append(asyncio.create_task(self._keep_spares()))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        started = await asyncio.gather(*self._starting, return_exceptions=True)
        doomed = [c for c in started if isinstance(c, Container)] + [e.container for e in self.entries.values()]
        while not self._spares.empty():
            doomed.append(self._spares.get_nowait())
        self.entries.clear()
        results = await asyncio.gather(*(asyncio.to_thread(c.close) for c in doomed), return_exceptions=True)
        for container, outcome in zip(doomed, results):
            if isinstance(outcome, BaseException):
                logger.error("container %s: not removed completely at shutdown: %s", container.id, outcome)

    # ---- containers ----------------------------------------------------------------------
    def _new_container(self) -> Container:
        """Blocking: a started container with a fresh id, directory and (under root) uid."""
        container_id = f"cntr_{secrets.token_hex(16)}"
        container = Container(container_id, self.root / container_id, self.spec, pick_uid(self.uid_base))
        try:
            container.start()
        except BaseException:
            try:
                container.close()
            except OSError:
                logger.exception("container %s: not removed after a failed start", container_id)
            raise
        return container

    async def _spawn(self) -> Container:
        """A new container; if the caller is cancelled meanwhile, close() still finds and ends it."""
        future = asyncio.ensure_future(asyncio.to_thread(self._new_container))
        self._starting.add(future)
        container = await asyncio.shield(future)
        self._starting.discard(future)
        return container

    async def create(self, name: str = "", idle_expiry_s: float | None = None, *, project: str | None = None) -> dict:
        await self._make_room()
        try:
            container = self._spares.get_nowait()
            self._spare_slots.release()
        except asyncio.QueueEmpty:
            container = await self._spawn()
        container.created_at = container.last_active_at = time.time()
        entry = Entry(container, name, idle_expiry_s or self.idle_expiry_s, project)
        self.entries[container.id] = entry
        return entry.to_openai()

    async def _make_room(self) -> None:
        stuck: set[str] = set()  # could not be removed: not tried twice
        while len(self.entries) >= self.max_containers:
            victim = next((cid for cid, e in self.entries.items() if not e.lock.locked() and cid not in stuck), None)
            if victim is None:
                raise PoolFull(f"all {self.max_containers} containers are busy")
            logger.info("evicting least recently used container %s", victim)
            try:
                await self.delete(victim)
            except DeleteFailed:
                stuck.add(victim)
            except ContainerNotFound:
                pass  # deleted meanwhile

    def _entry(self, container_id: str, project: str | None = None) -> Entry:
        entry = self.entries.get(container_id)
        if entry is None or (project is not None and entry.project != project):
            raise ContainerNotFound(f"no container {container_id!r} (it may have expired or been deleted)")
        return entry

    def _touch(self, container_id: str, project: str | None) -> Entry:
        entry = self._entry(container_id, project)
        self.entries[container_id] = self.entries.pop(container_id)  # most recently used last
        return entry

    def health(self) -> dict:
        return {"containers": len(self.entries), "layers": list(self.spec.layers), "limits": self.limits}

    def get(self, container_id: str, *, project: str | None = None) -> dict:
        return self._entry(container_id, project).to_openai()

    def list(self, *, project: str | None = None) -> list[dict]:
        return sorted((e.to_openai() for e in self.entries.values() if project in (None, e.project)),
                      key=lambda c: c["created_at"])

    async def delete(self, container_id: str, *, project: str | None = None) -> None:
        """Kill every process of the container and remove its files: all of them, or the entry
        goes back into the table and DeleteFailed says what is left."""
        self._entry(container_id, project)
        entry = self.entries.pop(container_id, None)
        if entry is None:
            raise ContainerNotFound(f"no container {container_id!r}")
        async with entry.lock:  # a call in flight ends first (bounded by its timeout)
            try:
                await asyncio.to_thread(entry.container.close)
            except OSError as exc:
                logger.error("container %s: processes killed, files not all removed: %s", container_id, exc)
                self.entries.setdefault(container_id, entry)
                raise DeleteFailed(f"container {container_id}: its processes are stopped but its files could not "
                                   f"all be removed ({exc}); it is kept, retry the delete") from None

    def container(self, container_id: str) -> Container:
        """For tests and diagnostics: the live Container object."""
        return self._entry(container_id).container

    # ---- calls ---------------------------------------------------------------------------
    async def run(self, container_id: str | None, code: str, timeout_s: float | None = None, *,
                  project: str | None = None) -> ExecResult:
        if container_id is None:
            container_id = (await self.create(name="auto", project=project))["id"]
        entry = self._touch(container_id, project)
        async with entry.lock:
            return await asyncio.to_thread(entry.container.run, code, min(timeout_s or self.timeout_s, self.timeout_s))

    # ---- files ---------------------------------------------------------------------------
    async def upload(self, container_id: str, name: str, data: bytes, *, project: str | None = None) -> ContainerFile:
        entry = self._touch(container_id, project)
        async with entry.lock:
            return await asyncio.to_thread(entry.container.upload, name, data)

    async def list_files(self, container_id: str, *, project: str | None = None) -> list[ContainerFile]:
        entry = self._entry(container_id, project)
        async with entry.lock:
            return await asyncio.to_thread(entry.container.list_files)

    @staticmethod
    def _find(container: Container, container_id: str, file_id: str) -> ContainerFile:
        """Blocking, under the entry's lock: the file as the directory is now."""
        container.files.sync(str(container.workdir))
        file = container.files.get(file_id)
        if file is None:
            raise ContainerNotFound(f"no file {file_id!r} in container {container_id!r}")
        return file

    async def file(self, container_id: str, file_id: str, *, project: str | None = None) -> ContainerFile:
        entry = self._entry(container_id, project)
        async with entry.lock:
            return await asyncio.to_thread(self._find, entry.container, container_id, file_id)

    async def read_file(self, container_id: str, file_id: str, *,
                        project: str | None = None) -> tuple[ContainerFile, bytes]:
        entry = self._entry(container_id, project)

        def read() -> tuple[ContainerFile, bytes]:
            file = self._find(entry.container, container_id, file_id)
            try:
                return file, entry.container.read(file)
            except FileNotFoundError:  # removed by a background process of the code meanwhile
                raise ContainerNotFound(f"no file {file_id!r} in container {container_id!r}") from None

        async with entry.lock:
            return await asyncio.to_thread(read)

    async def delete_file(self, container_id: str, file_id: str, *, project: str | None = None) -> None:
        """Look up and unlink under one hold of the lock: of concurrent deletes of one file, one
        succeeds and the others find no file (404), never a FileNotFoundError (500)."""
        entry = self._entry(container_id, project)

        def delete() -> None:
            file = self._find(entry.container, container_id, file_id)
            try:
                entry.container.delete_file(file)
            except FileNotFoundError:
                entry.container.files.by_path.pop(file.relpath, None)
                raise ContainerNotFound(f"no file {file_id!r} in container {container_id!r}") from None

        async with entry.lock:
            await asyncio.to_thread(delete)

    # ---- background ----------------------------------------------------------------------
    async def _reap_idle(self) -> None:
        while True:
            await asyncio.sleep(min(30.0, self.idle_expiry_s / 4))
            now = time.time()
            for cid, entry in list(self.entries.items()):
                if not entry.lock.locked() and now - entry.container.last_active_at > entry.idle_expiry_s:
                    logger.info("container %s expired after %.0f s idle", cid, entry.idle_expiry_s)
                    try:
                        await self.delete(cid)
                    except (DeleteFailed, ContainerNotFound):
                        pass  # logged by delete / deleted meanwhile; the reaper goes on

    async def _keep_spares(self) -> None:
        while True:
            await self._spare_slots.acquire()
            try:
                container = await self._spawn()
            except Exception:  # noqa: BLE001 - logged; create() then starts containers cold
                logger.exception("could not start a spare container")
                self._spare_slots.release()
                await asyncio.sleep(10.0)
                continue
            self._spares.put_nowait(container)
