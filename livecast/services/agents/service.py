"""The agents room: `agents_service(config, llm, db, tools)` builds the store, the Responses and
Assistants services and the retention sweeper; routes reach it as `app.state.agents`, seen through
`for_project` (deps.get_agents), so a request reads and writes only its own project's objects.

`tools` holds the peer rooms the built-in tools run on (the sandbox's containers for the code
interpreter, retrieval for file search), typed, started before this room.
"""
from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
from contextlib import asynccontextmanager, suppress
from typing import AsyncIterator

from livecast.services.agents.assistants.runs import Runs
from livecast.services.agents.background import Background
from livecast.services.agents.chat_completions import ChatCompletionStore, StoredChatCompletions
from livecast.services.agents.config import AgentsConfig
from livecast.services.agents.responses.service import Responses
from livecast.services.agents.store import AgentStore
from livecast.services.agents.tools import ToolRooms
from livecast.services.agents.tools.mcp_client import McpPolicy
from livecast.services.llm.service import LLMService

logger = logging.getLogger("livecast.agents")


class AgentsService:
    def __init__(self, config: AgentsConfig, llm: LLMService, db, tools: ToolRooms, retry_after_s: int = 1) -> None:
        if config.mcp_hosts:  # the mcp tool's limits, from this room's config
            tools = dataclasses.replace(tools, mcp=McpPolicy(config.mcp_hosts, config.mcp_timeout_s,
                                                             config.mcp_max_output_bytes))
        self.config, self.llm, self.db, self.tools = config, llm, db, tools
        self.store = AgentStore(db, config)
        self.background = Background(config.max_background, retry_after_s)
        self.responses = Responses(self)
        self.runs = Runs(self)
        self.chat_completions = StoredChatCompletions(self.store)

    def for_project(self, project: str) -> "AgentsService":
        """This service as `project` sees it: the same LLM, config and background tasks; the store
        and the tools' rooms (vector stores, containers) hold only that project's objects."""
        view = copy.copy(self)
        view.store, view.tools = self.store.scoped(project), self.tools.scoped(project)
        view.responses, view.runs = Responses(view), Runs(view)
        view.chat_completions = StoredChatCompletions(view.store)
        return view

    async def sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_interval_s)
            try:
                deleted = await asyncio.to_thread(self.store.sweep)
                deleted += await asyncio.to_thread(self.runs.expire_waiting)
                if deleted:
                    logger.info("store sweeper: %d objects deleted or expired", deleted)
            except Exception:  # a failed pass is retried at the next interval
                logger.exception("store sweep failed")

    def health(self) -> dict:
        return {"store": self.db.path, "background": len(self.background.tasks)}


@asynccontextmanager
async def agents_service(config: AgentsConfig, llm: LLMService | None, db, tools: ToolRooms,
                         retry_after_s: int = 1) -> AsyncIterator[AgentsService | None]:
    if llm is None:
        logger.warning("agents: the LLM room is off, so the Responses and Assistants APIs answer 503")
        yield None
        return
    service = AgentsService(config, llm, db, tools, retry_after_s)
    await asyncio.to_thread(service.store.sweep)
    sweeper = asyncio.create_task(service.sweep_forever(), name="agents:sweeper")
    llm.completion_store = ChatCompletionStore(service.store)  # `store: true` chat completions land here
    try:
        yield service
    finally:
        llm.completion_store = None
        sweeper.cancel()
        with suppress(asyncio.CancelledError):
            await sweeper
        await service.background.close()
