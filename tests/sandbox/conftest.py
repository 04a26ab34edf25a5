"""Real sandboxes for the tests: containers started with every layer this kernel has.

The tests prove containment with the layers that exist here; a kernel missing one skips only
the tests that need it (and the probe test says which). After each module no process of any
container uid may remain.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from livecast.services.sandbox.container import Container, pick_uid
from livecast.services.sandbox.probe import probe
from livecast.services.sandbox.config import SandboxConfig
from livecast.services.sandbox.service import container_spec

# small limits, so each breach is quick to reach
TEST_CONFIG = dict(cpu_s=2, cpu_s_total=60, memory_mb=1024, max_processes=32, max_file_mb=64, max_open_files=64,
                   disk_mb=256, output_limit_bytes=64 * 1024, timeout_s=20.0, spares=0)


@pytest.fixture(scope="session")
def support():
    return probe()


@pytest.fixture(scope="session")
def spec(support):
    return container_spec(SandboxConfig(**TEST_CONFIG, unsafe=True), support)


@pytest.fixture(scope="session")
def sandbox_root():
    root = tempfile.mkdtemp(prefix="livecast-test-containers-")
    os.chmod(root, 0o711)
    yield Path(root)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def make_container(spec, sandbox_root):
    made: list[Container] = []

    def make() -> Container:
        container = Container(f"cntr_test{len(made)}_{os.urandom(4).hex()}", sandbox_root / os.urandom(8).hex(),
                              spec, pick_uid(SandboxConfig().uid_base))
        made.append(container)
        container.start()
        return container

    yield make
    for container in made:
        container.close()


def _status(pid: int | str) -> tuple[int, int] | None:
    """(real uid, parent pid), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if line.startswith(("Uid:", "PPid:")))
    except (OSError, ValueError):
        return None
    return int(fields["Uid"].split()[0]), int(fields["PPid"])


def container_uid_pids() -> list[int]:
    """Processes running as any uid a root server hands to containers, but those of another live
    server or test run on this machine: climbing their parents, the first process that is not a
    container's must be this test run, or init (they were orphaned, which is a leak too)."""
    low = SandboxConfig().uid_base
    high = low + (1 << 24)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or (status := _status(entry)) is None or not low <= status[0] < high:
            continue
        owner = status[1]
        while (above := _status(owner)) is not None and low <= above[0] < high:
            owner = above[1]
        if owner in (os.getpid(), 1, 0):
            found.append(int(entry))
    return found


@pytest.fixture(autouse=True, scope="module")
def no_stray_processes():
    yield
    if os.geteuid() == 0:
        assert container_uid_pids() == [], "container processes outlived their tests"
