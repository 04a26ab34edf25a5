"""`livecast serve`: flags built from the settings' dataclass fields, then the app under uvicorn.

A field becomes a flag when its metadata has `help`; the flag is `--field-name` unless metadata
names one (`flag`); booleans that default to true are switched off with their `--no-…` flag;
`unit: GiB|MiB` fields take a number of that unit and hold bytes; `env` names an environment
variable that supplies the default. Each default is the dataclass's own (written once).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os

from livecast.services.settings import ServerSettings

_UNITS = {"GiB": 1 << 30, "MiB": 1 << 20}


def _flag_fields(cls):
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _add(group, section: str | None, f: dataclasses.Field) -> None:
    meta, default = f.metadata, _default(f)
    text = meta["help"].replace("%", "%%")
    flag = meta.get("flag") or ("--no-" if default is True else "--") + f.name.replace("_", "-")
    dest = f"{section}.{f.name}" if section else f.name
    if isinstance(default, bool):
        group.add_argument(flag, dest=dest, action="store_false" if default else "store_true", help=text)
        return
    if "env" in meta:
        default = os.environ.get(meta["env"], default)
    kind = "str" if "str" in str(f.type) else "float" if "float" in str(f.type) else "int"
    if "unit" in meta:
        scale = _UNITS[meta["unit"]]
        group.add_argument(flag, dest=dest, type=float, default=None if default is None else default / scale, metavar=meta["unit"],
                           help=f"{text} ({meta['unit']})")
        return
    group.add_argument(flag, dest=dest, type={"str": str, "float": float, "int": int}[kind], default=default,
                       metavar=f.name.upper(), help=text)


def _value(f: dataclasses.Field, raw):
    if raw is not None and "unit" in f.metadata:
        return int(raw * _UNITS[f.metadata["unit"]])
    return raw


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="livecast serve", description="Serve livecast over HTTP and WebSocket.")
    for f in _flag_fields(ServerSettings):
        _add(parser, None, f)
    for title, section in ServerSettings.SECTIONS.items():
        group = parser.add_argument_group(title)
        for f in _flag_fields(_section_type(section)):
            _add(group, section, f)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def _section_type(section: str):
    return next(f for f in dataclasses.fields(ServerSettings) if f.name == section).default_factory


def parse_settings(args: list[str]) -> tuple[ServerSettings, argparse.Namespace]:
    """ServerSettings from flags; ValueError (from a config's validation) names a bad value."""
    ns = build_parser().parse_args(args)
    values = vars(ns)
    sections = {}
    for section in ServerSettings.SECTIONS.values():
        cls = _section_type(section)
        sections[section] = cls(**{f.name: _value(f, values[f"{section}.{f.name}"]) for f in _flag_fields(cls)})
    shell = {f.name: _value(f, values[f.name]) for f in _flag_fields(ServerSettings)}
    return ServerSettings(**shell, **sections), ns


def main(argv: list[str]) -> int:
    """argv is `["serve", *flags]`, as services.cli passes it."""
    args = argv[1:] if argv and argv[0] == "serve" else argv
    try:
        settings, ns = parse_settings(args)
    except ValueError as exc:
        print(f"livecast serve: {exc}")
        return 2
    import uvicorn

    from livecast.services.app import create_app

    logging.basicConfig(level=ns.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.scale.enabled:  # N replicas on Ray Serve behind our ingress on --host/--port
        from livecast.services.scale.launcher import run_scaled

        return run_scaled(settings, settings.scale)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=ns.log_level,
                timeout_graceful_shutdown=5, ws_max_size=settings.max_body_bytes)
    return 0
