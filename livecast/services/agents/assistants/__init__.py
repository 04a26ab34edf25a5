"""Assistants v2 (assistants, threads, messages, runs, run steps) over the agent store and the
same run loop as the Responses API."""
