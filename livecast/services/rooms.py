"""The table of rooms the app walks: each row names the room (its service lands on
`app.state.<name>`), when it is on, its routers, and how its service starts from the settings and
the rooms started before it. Rows start in order and stop in reverse, so the device runtime,
the last row, stops first: no engine is stepped while its room closes. A new room is one row."""
from __future__ import annotations

import dataclasses
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncContextManager, Callable

from fastapi import APIRouter

from livecast.services.agents.db import open_database
from livecast.services.agents.service import agents_service
from livecast.services.agents.routes import ROUTERS as AGENTS_ROUTERS
from livecast.services.agents.tools import ToolRooms
from livecast.services.llm.routes import ROUTERS as LLM_ROUTERS
from livecast.services.llm.service import llm_service
from livecast.services.media.service import media_service
from livecast.services.media.routes import broadcast, frames, images, webrtc
from livecast.services.retrieval.routes import router as retrieval_router
from livecast.services.retrieval.service import retrieval_service
from livecast.services.runtime.service import device_runtime
from livecast.services.runtime.memory import plan_memory
from livecast.services.sandbox.routes import router as sandbox_router
from livecast.services.sandbox.service import containers_service
from livecast.services.settings import ServerSettings


@dataclass(frozen=True, slots=True)
class Room:
    name: str
    enabled: Callable[[ServerSettings], bool]
    routers: tuple[APIRouter, ...]
    # (settings, the app's state with every earlier room's service on it) -> its lifespan
    start: Callable[[ServerSettings, Any], AsyncContextManager]


@asynccontextmanager
async def _store(settings: ServerSettings):
    db = open_database(settings.agents.store_url, settings.agents.data_dir)
    try:
        yield db
    finally:
        db.close()


def _llm(settings: ServerSettings, up):
    # after media: on CUDA the KV cache is sized from what its models leave free
    engine_config = plan_memory(settings.engine, settings.memory, up.media)
    return llm_service(engine_config, settings.llm, up.registry, settings.retry_after_s)


def _retrieval(settings: ServerSettings, up):
    config = dataclasses.replace(settings.retrieval, data_dir=settings.agents.data_dir, batcher_thread=False)
    return retrieval_service(config, up.store, settings.retry_after_s)


def _runtime(settings: ServerSettings, up):
    llm, media, retrieval = up.llm, up.media, up.retrieval
    embeddings = (retrieval.batcher,) if retrieval is not None and retrieval.batcher is not None else ()
    return device_runtime(llm.engine if llm is not None else None, media.batcher if media is not None else None,
                          settings.runtime, up.registry, others=embeddings)


def _agents_on(settings: ServerSettings) -> bool:
    return settings.enable_agents


ROOMS = (
    Room("media", lambda s: s.enable_diffusion, (webrtc.router, broadcast.router, frames.router, images.router),
         lambda s, up: media_service(s.diffusion, up.registry)),
    Room("llm", lambda s: s.enable_llm, LLM_ROUTERS, _llm),
    Room("store", _agents_on, (), lambda s, up: _store(s)),
    Room("containers", _agents_on, (sandbox_router,), lambda s, up: containers_service(s.sandbox)),
    Room("retrieval", _agents_on, (retrieval_router,), _retrieval),
    Room("agents", _agents_on, AGENTS_ROUTERS,
         lambda s, up: agents_service(s.agents, up.llm, up.store, ToolRooms(up.containers, up.retrieval),
                                      s.retry_after_s)),
    Room("runtime", lambda s: True, (), _runtime),
)
