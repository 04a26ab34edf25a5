"""One Ray cluster for the whole folder: 2 LLM replicas (tiny random Llama) + 1 media replica (demo
diffusion at 128 px) on a local Ray with 2 CPUs, behind the ingress on a free port."""
from __future__ import annotations

import pytest

from livecast.services.media.config import MediaConfig
from tests.services.conftest import tiny_settings

CLUSTER_CPUS = 2


def pytest_configure(config):
    config.addinivalue_line("markers", "ray: starts a local Ray cluster (one per run, shared by tests/scale)")


@pytest.fixture(scope="package")
def cluster(tiny_llama_path):
    pytest.importorskip("ray.serve", reason="needs ray[serve]")
    from livecast.services.scale.config import ScaleConfig
    from livecast.services.scale.launcher import Cluster

    settings = tiny_settings(tiny_llama_path, port=0, enable_diffusion=True, diffusion=MediaConfig(
        resolution=128, ice_loopback=True, max_video_sessions=2))
    # Cluster.__enter__ tears everything down itself when startup fails; __exit__ on any test outcome
    with Cluster(settings, ScaleConfig(replicas=2, replica_timeout_s=240), num_cpus=CLUSTER_CPUS) as c:
        yield c


@pytest.fixture(scope="package")
def http(cluster):
    import httpx

    with httpx.Client(base_url=cluster.url, timeout=60) as client:
        yield client
