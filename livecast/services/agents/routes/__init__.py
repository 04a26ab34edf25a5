"""HTTP edge of the agents room: Responses, Conversations, Assistants, threads and runs."""
from livecast.services.agents.routes import assistants, conversations, responses, runs

ROUTERS = (responses.router, conversations.router, assistants.router, runs.router)
