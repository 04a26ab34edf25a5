"""HTTP edge of the agents room: Responses, Conversations, Assistants, threads and runs."""
from livecast.services.agents.routes import assistants, chat_completions, conversations, responses, runs

# runs before assistants: POST /v1/threads/runs (create and run) must not match POST /v1/threads/{thread_id}
ROUTERS = (responses.router, conversations.router, runs.router, assistants.router, chat_completions.router)
