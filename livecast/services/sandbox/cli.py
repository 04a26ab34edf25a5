"""`livecast sandbox run [FILE|-] [--timeout S] [--memory-mb N]` and `livecast sandbox probe`.

`run` executes one snippet in a fresh container and prints one JSON object: stdout, stderr,
exit_code, timed_out, limit (which limit ended it, or null) and files (paths written). It exits 0
when the sandbox itself worked, whatever the snippet did; 2 when the sandbox could not run.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from livecast.services.sandbox.container import Container, pick_uid
from livecast.services.sandbox.files import remove_tree
from livecast.services.sandbox.config import SandboxConfig
from livecast.services.sandbox.service import check_support, container_spec, limits_in_force, make_root, setup_cgroup

_DEFAULTS = SandboxConfig()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="livecast sandbox", description="the code interpreter's sandbox")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run Python code in a fresh container and print the result as JSON")
    run.add_argument("file", nargs="?", default="-", help="a Python file, or - for stdin (default)")
    run.add_argument("--timeout", type=float, default=_DEFAULTS.timeout_s, help="wall-clock seconds")
    run.add_argument("--memory-mb", type=int, default=_DEFAULTS.memory_mb,
                     help="memory limit: per process, and per container where a cgroup can be made")
    run.add_argument("--cpu-s", type=int, default=_DEFAULTS.cpu_s, help="CPU seconds")
    run.add_argument("--unsafe", action="store_true",
                     help="run even if this kernel lacks a sandbox layer (never do this for untrusted code)")
    sub.add_parser("probe", help="say which sandbox layers this kernel supports")
    return parser


def main(argv: list[str] | None = None) -> int:
    """argv as `livecast sandbox …` passes it (`["sandbox", "run", …]`), or without the first word."""
    if argv and argv[0] == "sandbox":
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    if args.command == "probe":
        support, _ = check_support(SandboxConfig())
        cgroup, cgroup_note = setup_cgroup(_DEFAULTS)  # made and removed again: whether the host allows it
        if cgroup is not None:
            cgroup.close()
        print(json.dumps({"layers": list(support.layers), "missing": list(support.missing),
                          "landlock_abi": support.landlock_abi, "detail": support.detail,
                          "limits": limits_in_force(_DEFAULTS, cgroup, cgroup_note)}))
        return 0 if not support.missing else 1
    try:
        config = SandboxConfig(timeout_s=args.timeout, memory_mb=args.memory_mb, cpu_s=args.cpu_s,
                               cpu_s_total=max(args.cpu_s, _DEFAULTS.cpu_s_total), spares=0, unsafe=args.unsafe)
        code = sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8").read()
    except (ValueError, OSError) as exc:
        print(f"livecast sandbox: {exc}", file=sys.stderr)
        return 2
    support, refusal = check_support(config)
    if refusal is not None:
        print(f"livecast sandbox: {refusal}", file=sys.stderr)
        return 2
    root, _ = make_root(config)
    cgroup, _ = setup_cgroup(config)
    container = None
    try:
        container = Container("cntr_cli", Path(root) / "cntr_cli", container_spec(config, support, cgroup),
                              pick_uid(config.uid_base))
        container.start()
        result = container.run(code, config.timeout_s)
    except (RuntimeError, OSError) as exc:
        print(f"livecast sandbox: the sandbox failed: {exc}", file=sys.stderr)
        return 2
    finally:
        try:
            if container is not None:
                container.close()
            if cgroup is not None:
                cgroup.close()
            remove_tree(root)
        except OSError as exc:
            print(f"livecast sandbox: could not remove {root}: {exc}", file=sys.stderr)
    print(json.dumps({"stdout": result.stdout, "stderr": result.stderr, "exit_code": result.exit_code,
                      "timed_out": result.timed_out, "limit": result.limit,
                      "files": [f.path for f in result.files]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
