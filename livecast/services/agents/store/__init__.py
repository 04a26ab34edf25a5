"""The agent store: every object the Responses, Conversations and Assistants APIs keep, in one
database behind `Database` (SQLite today; the SQL is portable so PostgreSQL can serve it later).

Callers group writes in `store.db.transaction()`; nothing here ever waits on generation.
Retention: `sweep()` deletes what is older than the age limit or beyond the count caps (each
project has its own: one project's objects never push out another's), then the children of
whatever it deleted, in one transaction. Routes see the store through `scoped(project)`.
"""
from __future__ import annotations

import copy

from livecast.services.agents.config import AgentsConfig
from livecast.services.agents.store.table import Table, new_id, now_us

__all__ = ["AgentStore", "Table", "new_id", "now_us"]


class AgentStore:
    def __init__(self, db, config: AgentsConfig) -> None:
        self.db, self.config = db, config
        self.responses = Table(db, "agent_responses", "response")
        self.conversations = Table(db, "agent_conversations", "conversation")
        # items: a response's input items (parent: the response) and a conversation's items
        self.items = Table(db, "agent_items", "item")
        self.assistants = Table(db, "agent_assistants", "assistant")
        self.threads = Table(db, "agent_threads", "thread")
        self.messages = Table(db, "agent_messages", "message")  # parent: the thread
        self.runs = Table(db, "agent_runs", "run")  # parent: the thread
        self.steps = Table(db, "agent_run_steps", "run step")  # parent: the run
        self.chat_completions = Table(db, "agent_chat_completions", "chat completion")  # `store: true`
        self.chat_messages = Table(db, "agent_chat_messages", "chat message")  # parent: the completion

    def scoped(self, project: str) -> "AgentStore":
        """The store as `project` sees it: every table holds only that project's objects."""
        view = copy.copy(self)
        for name, table in vars(self).items():
            if isinstance(table, Table):
                setattr(view, name, table.scoped(project))
        return view

    def delete_response(self, response_id: str) -> bool:
        with self.db.transaction():
            self.items.delete_children(response_id)
            return self.responses.delete(response_id)

    def delete_conversation(self, conversation_id: str) -> bool:
        with self.db.transaction():
            self.items.delete_children(conversation_id)
            return self.conversations.delete(conversation_id)

    def delete_thread(self, thread_id: str) -> bool:
        with self.db.transaction():
            for run in self.runs.children(thread_id):
                self.steps.delete_children(run["id"])
            self.runs.delete_children(thread_id)
            self.messages.delete_children(thread_id)
            return self.threads.delete(thread_id)

    def sweep(self) -> int:
        """One retention pass; returns how many objects it deleted."""
        c = self.config
        cap = c.max_items_per_conversation
        deleted = 0
        with self.db.transaction():
            if c.store_max_age_days > 0:
                cutoff = now_us() - int(c.store_max_age_days * 86400e6)
                for table in (self.responses, self.conversations, self.assistants, self.threads,
                              self.chat_completions):
                    deleted += table.sweep_older(cutoff)
            for table, max_count in ((self.responses, c.max_stored_responses),
                                     (self.conversations, c.max_conversations),
                                     (self.assistants, c.max_assistants), (self.threads, c.max_threads),
                                     (self.chat_completions, c.max_chat_completions)):
                for project in table.projects():
                    deleted += table.scoped(project).sweep_over(max_count)
            for conversation_id in self.items.parents_over(cap):
                if self.conversations.get(conversation_id) is not None:
                    deleted += self.items.sweep_over(cap, conversation_id)
            for thread_id in self.messages.parents_over(cap):
                deleted += self.messages.sweep_over(cap, thread_id)
            deleted += self.items.delete_orphans([self.responses, self.conversations])
            deleted += self.messages.delete_orphans([self.threads])
            deleted += self.runs.delete_orphans([self.threads])
            deleted += self.steps.delete_orphans([self.runs])
            deleted += self.chat_messages.delete_orphans([self.chat_completions])
        return deleted
