"""LoRA adapters for the LLM engine: PEFT folders read and checked (peft), resident slots
(slots), a step's batched low-rank update (batch), and the adapters by name (registry)."""
from livecast.engine.lora.peft import LoraAdapter, LoraError, LoraNotFound, ModuleShapes
from livecast.engine.lora.registry import LoraRegistry, parse_modules

__all__ = ["LoraAdapter", "LoraError", "LoraNotFound", "ModuleShapes", "LoraRegistry", "parse_modules"]
