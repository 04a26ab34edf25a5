"""Prompt/seed blends and temporal_blend through the live WebSocket protocol (issue 27): sent in a
`config`, read back in the same form, applied to the next frame; a bad blend names its field."""
from __future__ import annotations

import json

import websockets

from tests.media.test_ws_frames import _jpeg, _next_json, _result, _url

BLEND = {"prompt": [{"text": "oil painting", "weight": 1.0}, {"text": "neon city", "weight": 3.0}],
         "seed": [{"seed": 1, "weight": 1.0}, {"seed": 2, "weight": 1.0}], "temporal_blend": 0.5}


async def test_a_blend_config_applies_to_the_next_frame(media_server):
    async with websockets.connect(_url(media_server)) as ws:
        await _next_json(ws, "hello")
        await ws.send(json.dumps({"type": "config", **BLEND}))
        config = await _next_json(ws, "config")
        assert {k: config["settings"][k] for k in BLEND} == BLEND
        await ws.send(_jpeg(0))
        await _result(ws)
        states = [s.state for s in media_server.diffusion.batcher._streams.values() if s.state is not None]
        blended = [s for s in states if s.params.temporal_blend == 0.5]
        assert len(blended) == 1
        state = blended[0]
        assert [p.text for p in state.params.prompt] == ["oil painting", "neon city"]
        assert state.temporal.latent is not None  # the frame went through the blend

        await ws.send(json.dumps({"type": "config", "prompt": [{"text": "a", "weight": 0}]}))
        error = await _next_json(ws, "error")
        assert error["code"] == "invalid_settings" and error["param"] == "prompt"
        await ws.send(json.dumps({"type": "config", "seed": [{"seed": 1}]}))
        error = await _next_json(ws, "error")
        assert error["param"] == "seed" and "weight" in error["message"]
