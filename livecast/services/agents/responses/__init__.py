"""The Responses API: items, the response lifecycle (stored, streamed, background) and its events."""
