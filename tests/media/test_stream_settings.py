"""StreamSettings checks names and types at the edge, StreamParams the ranges; the batcher holds
each stream's settings (no server needed)."""
from __future__ import annotations

import asyncio

import pytest

from livecast.services.media.service import MediaService
from livecast.services.media.stream_settings import SETTABLE, StreamSettings, param_error_name
from tests.streamdiff.conftest import make_pipe


def test_changes_keep_only_the_fields_sent():
    assert StreamSettings.changes({"strength": 1, "t_index_list": [0, 1]}) == {"strength": 1.0, "t_index_list": [0, 1]}
    assert StreamSettings.changes({}) == {}


def test_an_unknown_field_is_named_before_a_mistyped_one():
    with pytest.raises(ValueError) as caught:
        StreamSettings.changes({"zeta": 1, "strength": "x", "alpha": 2})
    assert str(caught.value) == f"alpha is not a stream setting; settable: {list(SETTABLE)}"
    with pytest.raises(ValueError, match="^width is not a stream setting") as caught:
        StreamSettings.changes({"width": 64})  # a StreamParams field, but not settable over the wire
    assert param_error_name(str(caught.value)) == "width"


def test_a_mistyped_field_is_named():
    with pytest.raises(ValueError, match="^strength input should be a valid number") as caught:
        StreamSettings.changes({"strength": "x"})
    assert param_error_name(str(caught.value)) == "strength"


def test_the_service_reads_each_streams_settings_from_the_batcher():
    service = MediaService(make_pipe())
    try:
        stream_id = service.open_stream(prompt="a cat", t_index_list=[0, 1], num_inference_steps=2)
        assert service.stream_settings(stream_id)["t_index_list"] == [0, 1]
        assert service.update_stream(stream_id, seed=5)["seed"] == 5 == service.batcher.params(stream_id).seed
        service.batcher.update_stream(stream_id, prompt="a dog")  # no second copy to fall out of step
        assert service.stream_settings(stream_id)["prompt"] == "a dog" and service.health()["streams"] == 1
        service.close_stream(stream_id)
        service.close_stream(stream_id)  # twice is fine
        assert service.num_streams == 0
        with pytest.raises(KeyError):
            service.stream_settings(stream_id)
    finally:
        asyncio.run(service.stop())


def test_blends_and_temporal_blend_pass_the_edge_and_come_back_in_the_form_sent():
    changes = {"prompt": [{"text": "a cat", "weight": 1}, {"text": "a dog", "weight": 3}],
               "seed": [{"seed": 1, "weight": 0.5}, {"seed": 2, "weight": 0.5}], "temporal_blend": 0.5}
    assert StreamSettings.changes(changes) == {
        "prompt": [{"text": "a cat", "weight": 1.0}, {"text": "a dog", "weight": 3.0}],
        "seed": [{"seed": 1, "weight": 0.5}, {"seed": 2, "weight": 0.5}], "temporal_blend": 0.5}
    assert StreamSettings.changes({"prompt": "plain", "seed": 3}) == {"prompt": "plain", "seed": 3}
    service = MediaService(make_pipe())
    try:
        stream_id = service.open_stream(**StreamSettings(**changes).stream_kwargs())  # the WebRTC offer's path
        settings = service.stream_settings(stream_id)
        assert settings["prompt"] == changes["prompt"] and settings["seed"] == changes["seed"]
        assert settings["temporal_blend"] == 0.5
        # what a client reads back it may send back (the WebSocket config and data channel path)
        assert service.update_stream(stream_id, **settings) == settings
        assert service.update_stream(stream_id, prompt="a cat", seed=4)["prompt"] == "a cat"
    finally:
        asyncio.run(service.stop())


@pytest.mark.parametrize("changes,message", [
    ({"prompt": 5}, "prompt input should be a valid string"),
    ({"prompt": [{"text": "a"}]}, "prompt.0.weight field required"),
    ({"prompt": [{"text": "a", "weight": 1, "extra": 2}]}, "prompt.0.extra extra inputs are not permitted"),
    ({"seed": [{"seed": 1.5, "weight": 1}]}, "seed.0.seed input should be a valid integer"),
    ({"temporal_blend": "x"}, "temporal_blend input should be a valid number"),
])
def test_a_mistyped_blend_is_named(changes, message):
    with pytest.raises(ValueError) as caught:
        StreamSettings.changes(changes)
    assert str(caught.value).startswith(message)
    assert param_error_name(str(caught.value)) == next(iter(changes))


@pytest.mark.parametrize("changes,name", [
    ({"prompt": []}, "prompt"), ({"prompt": [{"text": "a", "weight": 0}]}, "prompt"),
    ({"prompt": [{"text": "a", "weight": 1}] * 9}, "prompt"), ({"seed": [{"seed": 1, "weight": -1}]}, "seed"),
    ({"temporal_blend": 0.99}, "temporal_blend"),
])
def test_a_blend_out_of_range_is_named_by_streamparams(changes, name):
    service = MediaService(make_pipe())
    try:
        stream_id = service.open_stream()
        with pytest.raises(ValueError) as caught:
            service.update_stream(stream_id, **changes)
        assert param_error_name(str(caught.value)) == name
    finally:
        asyncio.run(service.stop())
