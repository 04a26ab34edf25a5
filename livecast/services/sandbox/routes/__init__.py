"""The sandbox room's HTTP edge: OpenAI's Containers API and its files."""
from livecast.services.sandbox.routes.containers import router

__all__ = ["router"]
