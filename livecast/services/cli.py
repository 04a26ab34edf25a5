"""The `livecast` command: serve, generate, chat, sandbox, cot, train and the benchmarks."""
from __future__ import annotations

import argparse
import importlib
import sys

# Each benchmark lives in its own module exposing `main(argv) -> int`; imported only when run.
BENCHMARKS = {
    "throughput": "livecast.services.bench.throughput",
    "serving": "livecast.services.bench.serving",
    "diffusion": "livecast.services.bench.diffusion",
    "video": "livecast.services.bench.video",
    "webrtc": "livecast.services.bench.webrtc",
    "fanout": "livecast.services.bench.fanout",
    "speculative": "livecast.services.bench.speculative",
    "cohost": "livecast.services.bench.cohost",
    "kernels": "livecast.services.bench.kernels",
    "retrieval": "livecast.services.bench.retrieval",
    "cot": "livecast.services.bench.cot",
    "quant": "livecast.services.bench.quant",
    "scale": "livecast.services.bench.scale",
    "lora": "livecast.services.bench.lora",
}

# Subcommands that own their argument parsing: `livecast NAME …` → module.main(argv).
COMMANDS = {
    "serve": "livecast.services.serve",
    "sandbox": "livecast.services.sandbox.cli",
    "cot": "livecast.services.llm.cot.offline.cli",
    "quantize": "livecast.engine.quant.cli",
    "generate": "livecast.engine.cli",
    "chat": "livecast.engine.cli",
    "train": "livecast.streamdiff.training.train",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="livecast", description=__doc__)
    parser.add_argument("command", choices=[*COMMANDS, "bench"])
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        print("\nbenchmarks: livecast bench {" + ",".join(BENCHMARKS) + "} [--json PATH]")
        return 0
    command, rest = argv[0], argv[1:]
    if command == "bench":
        if not rest or rest[0] not in BENCHMARKS:
            print(f"usage: livecast bench {{{','.join(BENCHMARKS)}}} [--json PATH]", file=sys.stderr)
            return 2
        return int(importlib.import_module(BENCHMARKS[rest[0]]).main(rest[1:]) or 0)
    if command not in COMMANDS:
        parser.error(f"unknown command {command!r}")
    module = importlib.import_module(COMMANDS[command])
    return int(module.main([command, *rest]) or 0)


if __name__ == "__main__":
    sys.exit(main())
