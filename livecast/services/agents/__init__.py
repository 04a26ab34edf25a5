"""The agent layer: Responses/Conversations/Assistants over one store, with built-in tools
(code interpreter, file search) and Chain of Thought. Everything here reaches the engines through
the LLM service and the device runtime; nothing in services/llm or services/media imports it."""
