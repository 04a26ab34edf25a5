"""Every count a body carries is checked against its cap at the pydantic edge, before anything is
built for it: `n=1e9` on /v1/chat/completions used to build a choice object per n until the kernel
killed the server. Sizes here stay bounded (n=1e6 built ~140 MB before the fix), so a regression
fails the test instead of taking the machine down."""
from __future__ import annotations

import psutil
import pytest

from livecast.services.llm.protocol import (MAX_BEST_OF, MAX_CHOICES, MAX_COMPLETION_LOGPROBS, MAX_MESSAGES, MAX_STOP,
                                           MAX_TOKEN_LIST, MAX_TOOLS)
from tests.reliability.conftest import http, server  # noqa: F401  (one tiny-model server per module)

HI = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
CHAT = "/v1/chat/completions"


@pytest.mark.parametrize("path, body, param, cap", [
    (CHAT, {"messages": HI, "n": 1_000_000}, "n", MAX_CHOICES),
    (CHAT, {"messages": HI, "logprobs": True, "top_logprobs": 1_000_000}, "top_logprobs", 20),
    (CHAT, {"messages": HI, "stop": ["x"] * (MAX_STOP + 1)}, "stop", MAX_STOP),
    (CHAT, {"messages": HI, "stop_token_ids": [1] * (MAX_TOKEN_LIST + 1)}, "stop_token_ids", MAX_TOKEN_LIST),
    (CHAT, {"messages": HI, "logit_bias": {str(i): 1 for i in range(MAX_TOKEN_LIST + 1)}}, "logit_bias",
     MAX_TOKEN_LIST),
    (CHAT, {"messages": HI, "tools": [TOOL] * (MAX_TOOLS + 1)}, "tools", MAX_TOOLS),
    (CHAT, {"messages": HI * (MAX_MESSAGES + 1)}, "messages", MAX_MESSAGES),
    ("/v1/completions", {"prompt": "hi", "best_of": 1_000_000}, "best_of", MAX_BEST_OF),
    ("/v1/completions", {"prompt": "hi", "n": 1_000_000}, "n", MAX_CHOICES),
    ("/v1/completions", {"prompt": "hi", "logprobs": 1_000_000}, "logprobs", MAX_COMPLETION_LOGPROBS),
    ("/generate", {"inputs": "hi", "parameters": {"stop": ["x"] * (MAX_STOP + 1)}}, "parameters.stop", MAX_STOP),
])
def test_counts_fail_at_the_edge_with_their_cap(http, path, body, param, cap):
    rss_before = psutil.Process().memory_info().rss  # the server runs in this process
    r = http.post(path, json={"max_tokens": 2, **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and str(cap) in error["message"], error
    assert psutil.Process().memory_info().rss - rss_before < 64 << 20


def test_a_request_at_the_caps_still_runs(http):
    r = http.post(CHAT, json={"messages": HI, "max_tokens": 1, "n": 4, "stop": ["x"] * MAX_STOP,
                              "logprobs": True, "top_logprobs": 20})
    assert r.status_code == 200, r.text
    assert len(r.json()["choices"]) == 4
