"""`livecast quantize awq --model M --out DIR [--calib FILE] [--group-size N] [--bits 4]`."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from livecast.engine.quant.int4 import GROUP_SIZES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="livecast quantize", description="quantize a model's weights to int4")
    sub = parser.add_subparsers(dest="method", required=True)
    awq = sub.add_parser("awq", help="activation-aware int4 (writes an AutoAWQ GEMM folder)")
    awq.add_argument("--model", default=None, help="HF Llama-family folder or .gguf (default: SmolLM2-135M)")
    awq.add_argument("--out", required=True, type=Path, help="output folder")
    awq.add_argument("--calib", default=None, help="calibration text file (default: the bundled corpus)")
    awq.add_argument("--group-size", type=int, default=None,
                     help="input channels per scale (default: 128, or the largest of 64/32 that divides "
                          "every layer's width)")
    awq.add_argument("--bits", type=int, default=4, choices=[4])
    awq.add_argument("--samples", type=int, default=32, help="calibration blocks")
    awq.add_argument("--seq-len", type=int, default=128, help="tokens per calibration block")
    return parser


def default_group_size(config) -> int:
    widths = (config.hidden_size, config.intermediate_size)
    for size in (128, 64, 32):
        if all(w % size == 0 for w in widths):
            return size
    raise ValueError(f"no int4 group size in {GROUP_SIZES} divides the layer widths {widths}")


def main(argv: list[str]) -> int:
    """argv as `livecast quantize …` passes it (`["quantize", "awq", …]`), or without the first word."""
    if argv and argv[0] == "quantize":
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from livecast.engine.model_loader import load_config, resolve_model
    from livecast.engine.quant import awq_format
    from livecast.engine.quant.awq import AWQConfig, quantize_model
    from livecast.engine.quant.calibration import calibration_texts, token_blocks

    try:
        path = resolve_model(args.model)
        if awq_format.read_config(path) is not None:
            raise ValueError(f"{path} is already quantized")
        hf_config = load_config(path)
        group_size = args.group_size or default_group_size(hf_config)
        config = AWQConfig(group_size=group_size, bits=args.bits)
        texts = calibration_texts(args.calib)
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    input_ids = token_blocks(tokenizer, texts, args.samples, args.seq_len)
    print(f"AWQ int4, group {group_size}, on {input_ids.numel()} calibration tokens", file=sys.stderr)
    try:
        quantized = quantize_model(model, input_ids, config)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model_config = model.config.to_dict()
    model_config.pop("quantization_config", None)
    awq_format.save_folder(path, args.out, model.state_dict(), quantized, model_config)
    print(json.dumps({"out": str(args.out), "group_size": group_size, "linears": len(quantized),
                      "calibration_tokens": input_ids.numel(),
                      "seconds": round(time.perf_counter() - start, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
