"""`livecast generate "…"` and `livecast chat` (interactive, streams tokens) for quick use."""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time

from livecast.engine.async_engine import AsyncLLMEngine
from livecast.engine.config import EngineConfig
from livecast.engine.sampling_params import SamplingParams


def build_parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"livecast {command}")
    if command == "generate":
        parser.add_argument("prompt", help="prompt text (applied as a chat user turn unless --raw)")
        parser.add_argument("--raw", action="store_true", help="complete the prompt as plain text")
    parser.add_argument("--model", default=None, help="HF Llama-family folder or .gguf (default: SmolLM2-135M)")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--system", default=None, help="system prompt")
    return parser


def main(argv: list[str]) -> int:
    command, rest = argv[0], argv[1:]
    args = build_parser(command).parse_args(rest)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        engine = AsyncLLMEngine.from_config(EngineConfig(model=args.model, dtype=args.dtype), log_stats=False)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    params = dict(temperature=args.temperature, top_p=args.top_p, seed=args.seed, max_tokens=args.max_tokens)
    return asyncio.run(_generate(engine, args, params) if command == "generate" else _chat(engine, args, params))


def _messages(system: str | None, turns: list[dict]) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + turns


def _prompt(engine, messages) -> list[int]:
    ids = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


async def _stream(engine, prompt, params, request_id) -> str:
    text, count, start = "", 0, time.perf_counter()
    async for out in engine.generate(prompt, SamplingParams(**params), request_id, delta=True):
        piece = out.outputs[0].text
        count += len(out.outputs[0].token_ids)
        text += piece
        print(piece, end="", flush=True)
    elapsed = time.perf_counter() - start
    print(f"\n[{count} tokens, {count / max(elapsed, 1e-9):.1f} tok/s]", file=sys.stderr)
    return text


async def _generate(engine, args, params) -> int:
    try:
        prompt = args.prompt if args.raw else _prompt(engine, _messages(args.system, [
            {"role": "user", "content": args.prompt}]))
        await _stream(engine, prompt, params, "generate-0")
        return 0
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        await engine.shutdown()


async def _chat(engine, args, params) -> int:
    turns: list[dict] = []
    print("livecast chat — empty line or Ctrl-D to quit", file=sys.stderr)
    try:
        for i in range(10**9):
            try:
                line = await asyncio.to_thread(input, "> ")
            except EOFError:
                break
            if not line.strip():
                break
            turns.append({"role": "user", "content": line})
            try:
                reply = await _stream(engine, _prompt(engine, _messages(args.system, turns)), params, f"chat-{i}")
            except ValueError as exc:  # e.g. the conversation outgrew the context: start over
                print(f"error: {exc}", file=sys.stderr)
                turns.clear()
                continue
            turns.append({"role": "assistant", "content": reply})
        return 0
    finally:
        await engine.shutdown()
