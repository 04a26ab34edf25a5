"""HTTP edge of the LLM room: models, chat, completions, TGI, tokenize, the WebSocket, LoRA adapters."""
from livecast.services.llm.routes import (
    chat,
    completions,
    generate,
    lora,
    models,
    tokenize,
    ws,
)

ROUTERS = (models.router, chat.router, completions.router, generate.router, tokenize.router, ws.router, lora.router)
