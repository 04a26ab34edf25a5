"""`livecast bench serving --workloads`: the shipped chat workloads, and the bench end to end on a
tiny model (livecast off and ngram, one server each; TTFT at small sizes)."""
from __future__ import annotations

import dataclasses
import json
import stat

import httpx
import pytest

from livecast.services.app import create_app
from livecast.services.bench import serving
from livecast.services.bench.llama_server import llama_server_spec_types
from livecast.services.bench.spec_workloads import DOCUMENTS, EDITS, chat_workloads
from livecast.services.serve import parse_settings
from tests.live_server import LiveServer, light_agents


def test_workloads_are_seeded_and_shaped_for_speculation():
    quote, edit, chat = chat_workloads(["quote", "edit", "chat"], seed=0)
    assert [len(w.items) for w in (quote, edit, chat)] == [8, 8, 8]
    assert (quote.max_tokens, edit.max_tokens, chat.max_tokens) == (256, 256, 128)
    # a quote carries its whole document, an edit its whole input: the reply can copy from the prompt
    assert sorted(doc for doc in DOCUMENTS if any(doc in m[0]["content"] for m in quote.items)) == sorted(DOCUMENTS)
    assert all(any(text in m[0]["content"] for m in edit.items) for _, text in EDITS)
    assert all(len(m) == 1 and m[0]["role"] == "user" for w in (quote, edit, chat) for m in w.items)
    # the same order for every server and run; another seed shuffles
    assert chat_workloads(["quote"], seed=0)[0].items == quote.items
    assert chat_workloads(["quote"], seed=1)[0].items != quote.items
    few = chat_workloads(["edit"], seed=0, num_items=3, max_tokens=7)[0]
    assert few.items == edit.items[:3] and few.max_tokens == 7
    with pytest.raises(ValueError, match="unknown workload"):
        chat_workloads(["quote", "poetry"], seed=0)


def test_the_llama_server_spec_types_come_from_its_help(tmp_path):
    binary = tmp_path / "llama-server"
    binary.write_text("#!/bin/sh\necho '--spec-type none,draft-simple,ngram-simple,ngram-mod    comma-separated'\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    assert llama_server_spec_types(str(binary)) == ["ngram-simple", "ngram-mod"]
    binary.write_text("#!/bin/sh\necho '--draft-max N   draft tokens'\n")
    assert llama_server_spec_types(str(binary)) == []


class InProcess:
    """A bench server in this process (the flags the bench would start `livecast serve` with), so
    the test pays for the imports once; stop_server's terminate/wait stop it."""

    def __init__(self, args, speculative):
        self.flags = serving.bench_serve_args(args, speculative) + ["--kv-cache-gb", "0.05"]
        settings, _ = parse_settings(self.flags)
        self.live = LiveServer(create_app(dataclasses.replace(settings, **light_agents()))).start()
        with httpx.Client(base_url=self.live.url, timeout=120) as http:
            assert http.get("/health").status_code == 200

    def terminate(self):
        self.live.stop()

    def wait(self, timeout=None):
        assert not self.live.alive


def test_the_bench_runs_each_setting_on_a_tiny_model(tiny_llama_path, tmp_path, capsys, monkeypatch):
    started: list[InProcess] = []

    def start(args, spec):
        started.append(InProcess(args, spec))
        return started[-1], started[-1].live.url

    monkeypatch.setattr(serving, "start_bench_server", start)
    out = tmp_path / "spec.json"
    assert serving.main(["--model", str(tiny_llama_path), "--dtype", "float32", "--workloads", "quote,chat",
                         "--speculative", "off,ngram", "--spec-streams", "1,2", "--items", "2", "--max-tokens", "12",
                         "--ttft-sizes", "64,128", "--ttft-runs", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    # one server per setting, each stopped before the next starts
    assert ["--speculative" in s.flags for s in started] == [False, True]
    assert started[1].flags[started[1].flags.index("--speculative") + 1] == "ngram"
    assert not any(s.live.alive for s in started)
    assert [s["server"] for s in result["settings"]] == ["livecast off", "livecast ngram"]
    off, ngram = result["settings"]
    for setting in (off, ngram):
        assert [(r["workload"], r["streams"]) for r in setting["runs"]] == [
            ("quote", 1), ("chat", 1), ("quote", 2), ("chat", 2)]
        for run in setting["runs"]:  # every item once, and at least 2 requests per stream
            assert run["completed"] == run["num_requests"] == 2 * run["streams"] and run["decode_tok_s"] > 0
            assert len(run["texts"]) == run["num_requests"] and all(run["texts"])
        assert [(t["prompt_tokens"], t["completed"]) for t in setting["ttft"]] == [(64, 2), (128, 2)]
        assert all(t["ttft_p50_ms"] > 0 for t in setting["ttft"])
    # off exports no drafts; with ngram the counters come from /metrics and stay consistent
    assert all(r["draft_tokens"] == 0 and r["acceptance"] is None for r in off["runs"])
    for run in ngram["runs"]:
        assert 0 <= run["accepted_tokens"] <= run["draft_tokens"]
        assert run["acceptance"] is None or 0.0 <= run["acceptance"] <= 1.0
    # greedy speculation is exact: one stream gives the same text as without it
    assert [r["texts"] for r in ngram["runs"][:2]] == [r["texts"] for r in off["runs"][:2]]
    table = capsys.readouterr().out
    assert "livecast ngram" in table and "2/2" in table and "TTFT" in table
