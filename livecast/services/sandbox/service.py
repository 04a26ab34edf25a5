"""The code interpreter's lifespan piece: `async with containers_service(config) as pool`.

It probes the kernel and says what it found; when a layer is missing it refuses (yields None,
and the routes answer 503) unless `unsafe=True`, in which case it runs with what there is and
says so loudly at startup — never a silent downgrade.
"""
from __future__ import annotations

import logging
import os
import tempfile
from contextlib import asynccontextmanager
from typing import AsyncIterator

from livecast.services.sandbox import cgroups, paths
from livecast.services.sandbox.config import SandboxConfig
from livecast.services.sandbox.container import ContainerSpec
from livecast.services.sandbox.files import MAX_DEPTH, MAX_ENTRIES, remove_tree
from livecast.services.sandbox.limits import OOM_SCORE_ADJ
from livecast.services.sandbox.pool import ContainerPool
from livecast.services.sandbox.probe import Support, probe

logger = logging.getLogger("livecast.sandbox")


def container_spec(config: SandboxConfig, support: Support, cgroup: cgroups.Site | None = None) -> ContainerSpec:
    """Layers: every one this kernel has (without the required ones only when unsafe). The uid
    only decides which directories need hiding; any uid in the pool's range sees the same ones."""
    uid = config.uid_base if os.geteuid() == 0 else os.getuid()
    policy = paths.build_policy(config.packages, uid, uid)
    return ContainerSpec(config.limits(), support.layers, support.landlock_abi, policy.to_json(), config.preload,
                         config.output_limit_bytes, config.disk_mb << 20, cgroup)


def setup_cgroup(config: SandboxConfig) -> tuple[cgroups.Site | None, str]:
    """This server's parent cgroup for its containers, logged; or None and why not."""
    site, note = cgroups.setup(config.cgroup_limits(), config.cgroup_dir)
    if site is not None:
        logger.info("code interpreter: each container gets its own cgroup v%d under %s (%s)", site.version,
                    ", ".join(site.parents.values()), ", ".join(site.in_force) + (f"; {note}" if note else ""))
    else:
        logger.warning("code interpreter: no cgroup can be made here, so memory and processes are bounded per "
                       "process, not per container: %s", note)
    return site, note


def check_support(config: SandboxConfig) -> tuple[Support, str | None]:
    """The probe, logged; and the reason to refuse, if any."""
    support = probe()
    logger.info(support.describe())
    if "root" in support.missing and "namespaces" in support.layers:
        logger.warning("code interpreter runs without its own root (%s)", support.detail["root"])
    if not support.missing_required:
        return support, None
    if config.unsafe:
        logger.warning("code interpreter runs WITHOUT %s (--unsafe-code-interpreter): model-written code is "
                       "less contained than docs/SECURITY.md describes", ", ".join(support.missing))
        return support, None
    return support, (f"the code interpreter is disabled: this kernel lacks {', '.join(support.missing_required)}; "
                     "start the server with --unsafe-code-interpreter to run code without it")


def make_root(config: SandboxConfig) -> tuple[str, bool]:
    """(root directory, whether we created it). Traversable but not listable by container uids."""
    if config.root_dir:
        os.makedirs(config.root_dir, exist_ok=True)
        root, owned = config.root_dir, False
    else:
        root, owned = tempfile.mkdtemp(prefix="livecast-containers-"), True
    os.chmod(root, 0o711)
    return root, owned


def _server_oom_score_adj() -> int | None:
    try:
        with open("/proc/self/oom_score_adj") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def limits_in_force(config: SandboxConfig, cgroup: cgroups.Site | None = None, cgroup_note: str = "") -> dict:
    """What bounds a container with this configuration: per process, per container, and the cgroup
    (null, with the reason, where none can be made)."""
    return {"per_process": {"memory_mb": config.memory_mb, "file_mb": config.max_file_mb,
                            "open_files": config.max_open_files, "cpu_s_per_call": config.cpu_s,
                            "cpu_s_total": config.cpu_s_total},
            "per_container": {"processes_and_threads": config.max_processes, "disk_mb": config.disk_mb,
                              "disk_covers": ["/mnt/data", "$TMPDIR"], "output_bytes_per_stream": config.output_limit_bytes,
                              "timeout_s": config.timeout_s, "scan_max_entries": MAX_ENTRIES,
                              "scan_max_depth": MAX_DEPTH},
            "oom_score_adj": {"sandbox": OOM_SCORE_ADJ, "server": _server_oom_score_adj()},
            "cgroup": cgroup.to_json() if cgroup else None, "cgroup_note": cgroup_note or None}


@asynccontextmanager
async def containers_service(config: SandboxConfig) -> AsyncIterator[ContainerPool | None]:
    if not config.enabled:
        yield None
        return
    support, refusal = check_support(config)
    if refusal is not None:
        logger.error(refusal)
        yield None
        return
    root, owned = make_root(config)
    cgroup, cgroup_note = setup_cgroup(config)
    pool = ContainerPool(container_spec(config, support, cgroup), root, max_containers=config.max_containers,
                         idle_expiry_s=config.idle_expiry_s, timeout_s=config.timeout_s, spares=config.spares,
                         uid_base=config.uid_base, limits=limits_in_force(config, cgroup, cgroup_note))
    await pool.start()
    try:
        yield pool
    finally:
        await pool.close()
        if cgroup is not None:
            try:
                cgroup.close()
            except OSError as exc:
                logger.error("code interpreter: cgroup %s not removed: %s", cgroup.parents, exc)
        if owned:
            try:
                remove_tree(root)
            except OSError as exc:
                logger.error("code interpreter: %s not removed completely: %s", root, exc)
