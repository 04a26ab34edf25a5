"""The pool as the run loop will use it: state, isolation, expiry, eviction, deletion, files."""
from __future__ import annotations

import asyncio
import os
import shutil
import tempfile

import pytest

from livecast.services.sandbox.pool import ContainerNotFound, ContainerPool
from livecast.services.sandbox.probe import probe
from livecast.services.sandbox.config import SandboxConfig
from livecast.services.sandbox.service import container_spec, make_root
from tests.sandbox.conftest import TEST_CONFIG


def _pool(**overrides) -> ContainerPool:
    config = SandboxConfig(**{**TEST_CONFIG, **overrides}, unsafe=True)
    root, _ = make_root(SandboxConfig(root_dir=tempfile.mkdtemp(prefix="livecast-test-pool-")))
    return ContainerPool(container_spec(config, probe()), root, max_containers=config.max_containers,
                         idle_expiry_s=config.idle_expiry_s, timeout_s=config.timeout_s, spares=config.spares,
                         uid_base=config.uid_base)


async def _close(pool: ContainerPool) -> None:
    await pool.close()
    shutil.rmtree(pool.root)


async def test_state_persists_in_a_container_and_not_across_containers():
    pool = _pool()
    await pool.start()
    try:
        first = await pool.run(None, "import numpy as np\nx = np.arange(4)\nopen('note.txt', 'w').write('a')")
        assert first.exit_code == 0 and first.container_id.startswith("cntr_")
        again = await pool.run(first.container_id, "print(x.sum(), open('note.txt').read())")
        assert again.stdout == "6 a\n"
        other = await pool.run(None, "import os\nprint(os.listdir('.'))\nx")
        assert other.container_id != first.container_id
        assert "[]" in other.stdout and "NameError: name 'x' is not defined" in other.stderr
    finally:
        await _close(pool)


async def test_matplotlib_png_comes_back_as_a_container_file():
    pool = _pool()
    await pool.start()
    try:
        result = await pool.run(None, "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\n"
                                      "plt.savefig('/mnt/data/plot.png')\nprint(plt.get_backend())")
        assert result.exit_code == 0, result.stderr
        assert [f.path for f in result.images] == ["/mnt/data/plot.png"] and result.images[0].source == "assistant"
        file, data = await pool.read_file(result.container_id, result.images[0].id)
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) == file.bytes
    finally:
        await _close(pool)


async def test_idle_container_expires_and_leaves_nothing():
    pool = _pool(idle_expiry_s=0.6)
    await pool.start()
    try:
        info = await pool.create("short-lived")
        container = pool.container(info["id"])
        pids, directory = container.pids(), container.directory
        assert len(pids) >= 2 and directory.exists()
        def gone() -> bool:
            return not any(os.path.exists(f"/proc/{pid}") for pid in pids) and not directory.exists()

        # the entry leaves the table first, then the processes are killed and reaped off the loop
        for _ in range(80):
            await asyncio.sleep(0.1)
            if info["id"] not in pool.entries and gone():
                break
        with pytest.raises(ContainerNotFound):
            pool.get(info["id"])
        assert gone()
    finally:
        await _close(pool)


async def test_delete_frees_processes_and_files_even_mid_sleep():
    pool = _pool()
    await pool.start()
    try:
        result = await pool.run(None, "import subprocess, sys, os\n"
                                      "if os.fork() == 0:\n    import time; time.sleep(60)\n"
                                      "open('f.txt', 'w').write('x')")
        container = pool.container(result.container_id)
        pids, directory = container.pids(), container.directory
        assert len(pids) == 3  # outer bootstrap, interpreter, the forked sleeper
        await pool.delete(result.container_id)
        assert not any(os.path.exists(f"/proc/{pid}") for pid in pids) and not directory.exists()
        with pytest.raises(ContainerNotFound):
            await pool.run(result.container_id, "1")
    finally:
        await _close(pool)


async def test_least_recently_used_is_evicted():
    pool = _pool(max_containers=2)
    await pool.start()
    try:
        a, b = (await pool.create("a"))["id"], (await pool.create("b"))["id"]
        await pool.run(a, "1")  # a is now the most recently used
        c = (await pool.create("c"))["id"]
        assert set(pool.entries) == {a, c} and b not in pool.entries
    finally:
        await _close(pool)


async def test_uploads_are_visible_and_links_are_not_followed():
    pool = _pool(spares=1)
    await pool.start()
    try:
        cid = (await pool.create("files"))["id"]
        uploaded = await pool.upload(cid, "../../data.csv", b"a,b\n1,2\n")
        assert uploaded.path == "/mnt/data/data.csv" and uploaded.source == "user"
        result = await pool.run(cid, "import os\nprint(open('data.csv').read().split())\n"
                                     "os.symlink('/etc/hostname', 'link')\nos.link('data.csv', 'hard.csv')")
        assert result.stdout == "['a,b', '1,2']\n", result.stderr
        names = {f.path for f in await pool.list_files(cid)}
        assert names == {"/mnt/data/data.csv", "/mnt/data/hard.csv"}  # the symlink is not a file of ours
        with pytest.raises(OSError):
            pool.container(cid).read(type(uploaded)("x", "link", 0, 0, "assistant"))  # O_NOFOLLOW: ELOOP
        await pool.delete_file(cid, uploaded.id)
        assert (await pool.run(cid, "import os; sorted(os.listdir())")).stdout == "['hard.csv', 'link']\n"
    finally:
        await _close(pool)


async def test_a_delete_that_cannot_remove_everything_is_reported_and_kept():
    """Finding 5: DELETE used to fail half-way (a 500 while the container vanished from the API,
    its directories left on disk). Now removal is complete, or the container stays listed and the
    failure is reported, and a retry finishes it."""
    from livecast.services.sandbox import files as cfiles
    from livecast.services.sandbox.pool import DeleteFailed
    pool = _pool()
    await pool.start()
    try:
        cid = (await pool.run(None, "import os\nos.makedirs('a/b/c')\nopen('a/b/c/f', 'w').write('x')")).container_id
        directory = pool.container(cid).directory
        real_unlink = os.unlink
        def failing_unlink(path, *args, **kwargs):
            if path == "f":
                raise PermissionError(1, "Operation not permitted")
            return real_unlink(path, *args, **kwargs)
        cfiles.os.unlink = failing_unlink
        try:
            with pytest.raises(DeleteFailed, match="could not all be removed"):
                await pool.delete(cid)
        finally:
            cfiles.os.unlink = real_unlink
        assert pool.get(cid)["id"] == cid and (directory / "data/a/b/c/f").exists()
        await pool.delete(cid)
        assert not directory.exists() and cid not in pool.entries
    finally:
        await _close(pool)


def test_remove_tree_handles_deep_trees_and_refuses_to_follow_links(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("k")
    from livecast.services.sandbox import files as cfiles
    top = tmp_path / "tree"
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(1500):  # deeper than Python's recursion limit, and than PATH_MAX allows by path
        os.mkdir("dddddd", dir_fd=fd)
        next_fd = os.open("dddddd", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = next_fd
    os.symlink(str(outside), "link", dir_fd=fd)
    os.close(fd)
    cfiles.remove_tree(str(top))
    assert not top.exists() and (outside / "keep").read_text() == "k"
    found = cfiles.scan(str(tmp_path))
    assert found.truncated is None and list(found) == ["outside/keep"]
