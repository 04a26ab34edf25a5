"""ScaleConfig validation, the replicas' role settings, Serve deployment options, id pinning. No Ray started."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from livecast.services.scale.config import ScaleConfig
from livecast.services.scale.pins import IdSniffer, location_id, wants_pins
from livecast.services.scale.replica import role_settings
from livecast.services.settings import ServerSettings


@pytest.mark.parametrize("fields, message", [
    ({"replicas": -1}, "replicas must be >= 0"), ({"routing": "random"}, "routing must be one of"),
    ({"heartbeat_s": 0.0}, "heartbeat_s"), ({"replicas": 3, "max_replicas": 2}, "max_replicas (2) must be >="),
    ({"replica_cpus": -1.0}, "replica_cpus"), ({"max_inflight": 0}, "max_inflight")])
def test_bad_values_are_named(fields, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ScaleConfig(**fields)


def test_counts_and_cpu_shares():
    assert not ScaleConfig().enabled and ScaleConfig(replicas=2).enabled
    assert ScaleConfig(replicas=2).num_llm == 2 and ScaleConfig(replicas=2, llm_replicas=3).num_llm == 3
    assert ScaleConfig(replicas=2).num_media(True) == 1 and ScaleConfig(replicas=2).num_media(False) == 0
    assert ScaleConfig(replicas=1, media_replicas=2).num_media(True) == 2
    assert ScaleConfig(replicas=1, replica_cpus=1.5).cpus_per_replica(3) == 1.5
    import os
    share = ScaleConfig(replicas=2).cpus_per_replica(3)
    assert share * 3 <= os.cpu_count() and share >= os.cpu_count() / 3 - 0.01  # never over-asks Ray


def test_role_settings_split_the_rooms():
    settings = ServerSettings(port=8000)
    llm, media = role_settings(settings, "llm", 2), role_settings(settings, "media", 1)
    assert (llm.enable_llm, llm.enable_diffusion, llm.enable_agents) == (True, False, True)
    assert (media.enable_llm, media.enable_diffusion, media.enable_agents) == (False, True, False)
    assert llm.port == media.port == 0 and llm.host == "127.0.0.1"
    assert llm.engine.num_threads == 2 and settings.engine.num_threads is None  # a copy, not the original
    with pytest.raises(ValueError, match="replica kind"):
        role_settings(settings, "gpu", 1)


def test_deployment_options_fixed_or_autoscaled_on_queue_depth():
    pytest.importorskip("ray.serve")
    from ray import serve

    from livecast.services.scale.launcher import deployment_options, queue_depth_policy
    from livecast.services.scale.replica import LivecastReplica

    fixed = serve.deployment(LivecastReplica).options(
        **deployment_options("media", 2, ScaleConfig(replicas=1, max_replicas=4), {"num_cpus": 0.5}))
    assert fixed.num_replicas == 2 and fixed.ray_actor_options == {"num_cpus": 0.5}
    scaled = serve.deployment(LivecastReplica).options(
        **deployment_options("llm", 2, ScaleConfig(replicas=2, max_replicas=4), {"num_gpus": 1}))
    auto = scaled._deployment_config.autoscaling_config
    assert (auto.min_replicas, auto.max_replicas) == (2, 4)
    assert auto.policy.policy_function.endswith("queue_depth_policy")

    def ctx(loads):
        return SimpleNamespace(aggregated_metrics={"load": loads}, target_num_replicas=2,
                               capacity_adjusted_min_replicas=2, capacity_adjusted_max_replicas=4,
                               config=SimpleNamespace(get_target_ongoing_requests=lambda: 4.0))
    assert queue_depth_policy(ctx({"a": 9.0, "b": 5.0}))[0] == 4    # 14 in flight / 4 per replica
    assert queue_depth_policy(ctx({"a": 40.0, "b": 40.0}))[0] == 4  # capped at max
    assert queue_depth_policy(ctx({"a": 0.0, "b": 1.0}))[0] == 2    # floored at min
    assert queue_depth_policy(ctx({}))[0] == 2                      # no reports yet: keep the target


def _sse(*objects) -> bytes:
    return b"".join(b"data: " + json.dumps(o).encode() + b"\n\n" for o in objects)


def test_a_whip_streams_id_comes_from_its_location():
    assert location_id("POST", "/v1/whip", 201, "/v1/whip/abc123") == "abc123"
    assert location_id("POST", "/v1/whip", 400, None) is None
    assert location_id("POST", "/v1/webrtc/offer", 201, "/v1/whip/abc123") is None
    assert location_id("GET", "/v1/whip", 201, "/v1/whip/abc123") is None


def test_id_sniffer_reads_json_bodies_and_the_first_sse_event_with_an_id():
    assert wants_pins("POST", "/v1/responses") and wants_pins("POST", "/v1/webrtc/offer")
    assert not wants_pins("GET", "/v1/responses/resp_1") and not wants_pins("POST", "/v1/chat/completions")
    sniffer = IdSniffer("application/json")
    body = json.dumps({"id": "thread_9", "object": "thread"}).encode()
    assert sniffer.feed(body[:5]) == [] and sniffer.feed(body[5:]) == []
    assert sniffer.done() == ["thread_9"]
    offer = IdSniffer("application/json")
    offer.feed(json.dumps({"sdp": "v=0", "type": "answer", "session_id": "s1"}).encode())
    assert offer.done() == ["s1"]
    stream = _sse({"type": "response.created", "response": {"id": "resp_7", "conversation": "conv_3"}},
                  {"type": "response.output_text.delta", "delta": "hi"})
    sniffer = IdSniffer("text/event-stream; charset=utf-8")
    assert sniffer.feed(stream[:10]) == []  # half an event: nothing yet
    assert sniffer.feed(stream[10:]) == ["resp_7", "conv_3"]
    assert sniffer.feed(_sse({"id": "later"})) == []  # pinned once, then the stream just flows
    assert IdSniffer("text/plain").feed(b'{"id": "x"}') == []
