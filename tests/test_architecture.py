"""The import graph of livecast/, read from the source with ast (module-level imports only: a
function-local import is a deliberate late binding, not an arrow of the design).

- Calls flow one way: services → engine, streamdiff → kernels.
- No import cycle between modules.
- No room reads the composed settings: rooms take the shell's values from services.core.
- One driver loop: every engine the device runtime steps is a livecast.driven.Driven, and the
  runtime calls nothing on them but that interface.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "livecast"
# composition roots may import the settings: they build whole apps from them
COMPOSERS = {"livecast.services.app", "livecast.services.rooms", "livecast.services.serve", "livecast.services.cli", "livecast.services.settings"}
COMPOSING_ROOMS = ("livecast.services.scale.", "livecast.services.bench.")  # launch replicas / servers
ROOMS = ("llm", "media", "runtime", "agents", "sandbox", "retrieval", "scale")


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    modules = {_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            body = node.body + node.orelse if isinstance(node, ast.If) else [node]
            for stmt in body:
                if isinstance(stmt, ast.Import):
                    targets.update(alias.name for alias in stmt.names)
                elif isinstance(stmt, ast.ImportFrom):
                    base = stmt.module or ""
                    if stmt.level:
                        parts = package.split(".")[:len(package.split(".")) - stmt.level + 1]
                        base = ".".join(parts + ([stmt.module] if stmt.module else []))
                    for alias in stmt.names:
                        full = f"{base}.{alias.name}"
                        targets.add(full if full in modules else base)
        graph[name] = {t for t in targets if t in modules}
    return graph


def test_calls_flow_one_way():
    graph = _graph()
    below = {"livecast.driven": ("livecast.kernels", "livecast.engine", "livecast.streamdiff", "livecast.services"),
             "livecast.kernels": ("livecast.engine", "livecast.streamdiff", "livecast.services"),
             "livecast.engine": ("livecast.services", "livecast.streamdiff"),
             "livecast.streamdiff": ("livecast.services", "livecast.engine")}
    wrong = [(m, t) for m, targets in graph.items() for layer, above in below.items() if m.startswith(layer)
             for t in targets if t.startswith(above)]
    assert wrong == []


def test_no_import_cycles():
    graph, state, cycles = _graph(), {}, []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert cycles == []


def test_no_room_imports_the_settings():
    graph = _graph()
    assert {f"livecast.services.{room}" for room in ROOMS} <= set(graph)
    wrong = [m for m, targets in graph.items() if "livecast.services.settings" in targets
             and m not in COMPOSERS and not m.startswith(COMPOSING_ROOMS)]
    assert wrong == []


def test_every_serving_room_has_the_same_face():
    # runtime (no routes: it steps the engines) and scale (it launches whole apps) are not serving rooms
    for room in ("llm", "media", "agents", "sandbox", "retrieval"):
        folder = PACKAGE / "services" / room
        faces = [folder / "config.py", folder / "service.py", folder / "deps.py", folder / "routes" / "__init__.py"]
        assert [f.relative_to(PACKAGE) for f in faces if not f.is_file()] == [], room


def test_no_two_test_files_share_a_name():
    names = [p.name for p in (ROOT / "tests").rglob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []


DRIVEN_INTERFACE = {"set_notify", "load", "step", "cancel_all"}


def test_the_runtime_calls_only_the_driven_interface():
    from livecast.driven import Driven
    from livecast.engine.async_engine import AsyncLLMEngine
    from livecast.services.retrieval.embeddings import EmbeddingBatcher
    from livecast.streamdiff.batcher import StreamBatcher

    assert all(issubclass(cls, Driven) for cls in (AsyncLLMEngine, StreamBatcher, EmbeddingBatcher))
    for name in DRIVEN_INTERFACE:  # each engine implements the whole interface itself or inherits it
        assert all(callable(getattr(cls, name)) for cls in (AsyncLLMEngine, StreamBatcher, EmbeddingBatcher))
    # every method called on an engine in the runtime loop: self.llm.x(), self.batcher.x(), work.x() ...
    tree = ast.parse((PACKAGE / "services" / "runtime" / "loop.py").read_text(encoding="utf-8"))
    engines = {"llm", "batcher", "work", "w", "other"}
    called = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            name = owner.attr if isinstance(owner, ast.Attribute) and isinstance(owner.value, ast.Name) \
                and owner.value.id == "self" else owner.id if isinstance(owner, ast.Name) else None
            if name in engines:
                called.add(node.func.attr)
    assert called and called <= DRIVEN_INTERFACE, called - DRIVEN_INTERFACE
