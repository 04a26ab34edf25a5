"""`livecast serve`: parse flags into ServerSettings and run the app under uvicorn."""
from __future__ import annotations

import argparse
import logging
import os

from services.settings import ServerSettings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="livecast serve", description="Serve livecast over HTTP and WebSocket.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=os.environ.get("LIVECAST_API_KEY"),
                        help="require `Authorization: Bearer KEY` (default: $LIVECAST_API_KEY, else none)")
    parser.add_argument("--max-queue", type=int, default=1024,
                        help="waiting requests beyond this are refused with 503 + Retry-After")
    parser.add_argument("--max-body-mb", type=float, default=4.0, help="larger request bodies get 413")
    parser.add_argument("--no-llm", dest="enable_llm", action="store_false", help="do not load the LLM")
    parser.add_argument("--no-diffusion", dest="enable_diffusion", action="store_false",
                        help="do not load the diffusion pipeline")
    llm = parser.add_argument_group("LLM")
    llm.add_argument("--model", default=None, help="HF folder, .gguf, or cached hub id (default: SmolLM2-135M-Instruct)")
    llm.add_argument("--served-model-name", default=None, help="the model name clients send (default: --model)")
    llm.add_argument("--dtype", default="auto", help="auto (bf16), float32, float16")
    llm.add_argument("--kv-cache-gb", type=float, default=None, help="KV cache size (default: the engine's)")
    llm.add_argument("--max-num-seqs", type=int, default=128)
    llm.add_argument("--no-jump-forward", dest="jump_forward", action="store_false",
                     help="decode grammar-forced text (JSON keys, tool-call frames) token by token")
    llm.add_argument("--max-num-batched-tokens", type=int, default=1024)
    llm.add_argument("--max-model-len", type=int, default=None)
    diffusion = parser.add_argument_group("diffusion")
    diffusion.add_argument("--diffusion-model", default="demo",
                           help="demo (random weights, CPU-live), sd-turbo-shape, a diffusers folder or hub id")
    diffusion.add_argument("--diffusion-device", default=None, help="cuda or cpu (default: cuda if available)")
    diffusion.add_argument("--diffusion-dtype", default="auto", help="auto (fp16 on CUDA, bf16 on CPU), float32, ...")
    diffusion.add_argument("--diffusion-resolution", type=int, default=None,
                           help="working side in pixels, a multiple of 64 (default: the model's)")
    diffusion.add_argument("--max-video-sessions", type=int, default=4, help="WebRTC sessions beyond this get 503")
    diffusion.add_argument("--latency-probe", action="store_true",
                           help="stamp each WebRTC input frame's pixel id on its output (livecast bench webrtc)")
    diffusion.add_argument("--ice-loopback", action="store_true",
                           help="offer only 127.0.0.1 to WebRTC peers (browser and server on one machine)")
    runtime = parser.add_argument_group("shared device runtime")
    runtime.add_argument("--frame-deadline-ms", type=float, default=66.0,
                         help="run a diffusion batch before a waiting frame gets this late (default 66 = 15 fps)")
    runtime.add_argument("--video-share", type=float, default=0.4,
                         help="share of device time video gets while the LLM also has work (default 0.4)")
    runtime.add_argument("--video-llm-tokens", type=int, default=64,
                         help="LLM tokens per step while video streams are live (bounds how long a frame waits)")
    runtime.add_argument("--memory-budget-gb", type=float, default=None,
                         help="CPU hosts: memory for both engines; the KV cache gets what diffusion and LLM weights leave")
    runtime.add_argument("--diffusion-memory-gb", type=float, default=None,
                         help="with --memory-budget-gb: what diffusion needs (default: its weights x 1.5)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def parse_settings(args: list[str]) -> tuple[ServerSettings, argparse.Namespace]:
    ns = build_parser().parse_args(args)
    settings = ServerSettings(
        host=ns.host, port=ns.port, api_key=ns.api_key, max_queue=ns.max_queue,
        max_body_bytes=int(ns.max_body_mb * (1 << 20)), enable_llm=ns.enable_llm,
        enable_diffusion=ns.enable_diffusion, model=ns.model, served_model_name=ns.served_model_name,
        dtype=ns.dtype, kv_cache_memory=int(ns.kv_cache_gb * (1 << 30)) if ns.kv_cache_gb else None,
        max_num_seqs=ns.max_num_seqs, max_num_batched_tokens=ns.max_num_batched_tokens, jump_forward=ns.jump_forward,
        max_model_len=ns.max_model_len, diffusion_model=ns.diffusion_model, diffusion_device=ns.diffusion_device,
        diffusion_dtype=ns.diffusion_dtype, diffusion_resolution=ns.diffusion_resolution,
        max_video_sessions=ns.max_video_sessions, latency_probe=ns.latency_probe,
        ice_loopback=ns.ice_loopback, frame_deadline_ms=ns.frame_deadline_ms, video_share=ns.video_share,
        video_llm_tokens=ns.video_llm_tokens,
        memory_budget=int(ns.memory_budget_gb * (1 << 30)) if ns.memory_budget_gb else None,
        diffusion_memory=int(ns.diffusion_memory_gb * (1 << 30)) if ns.diffusion_memory_gb else None)
    return settings, ns


def main(argv: list[str]) -> int:
    """argv is `["serve", *flags]`, as services.cli passes it."""
    args = argv[1:] if argv and argv[0] == "serve" else argv
    try:
        settings, ns = parse_settings(args)
    except ValueError as exc:
        print(f"livecast serve: {exc}")
        return 2
    import uvicorn

    from services.app import create_app

    logging.basicConfig(level=ns.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=ns.log_level,
                timeout_graceful_shutdown=5)
    return 0
