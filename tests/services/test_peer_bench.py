"""`livecast bench serving --peer-llama-server`: a bad binary is refused before any server starts,
and the closed-loop workloads are the ones the comparison promises."""
from __future__ import annotations

import random

import pytest

from livecast.services.bench import serving
from livecast.services.bench.llama_server import start_llama_server
from livecast.services.bench.streams import build_workloads


def test_a_peer_that_is_not_an_executable_is_refused_up_front(capsys):
    with pytest.raises(SystemExit) as exit_info:
        serving.main(["--peer-llama-server", "/etc/passwd"])
    assert exit_info.value.code == 2
    assert "/etc/passwd is not an executable file" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="not an executable file"):
        start_llama_server("/nonexistent/llama-server", "x.gguf", threads=1, parallel=1, ctx_per_slot=64)


class FakeTokenizer:
    """Stands in for the server's /tokenize: one id per word (the workload only slices ids)."""

    def post(self, path, json):
        assert path == "/tokenize"
        ids = [hash(w) % 1000 for w in json["prompt"].split()]
        return type("R", (), {"raise_for_status": lambda self: self, "json": lambda self: {"tokens": ids}})()


def test_workloads_have_the_promised_shapes():
    works = build_workloads(FakeTokenizer(), [1, 4, 16], 128, seed=0, rounds=2)
    assert [w.name for w in works] == ["1 stream", "4 streams", "16 streams", "batch 128"]
    one, four, sixteen, batch = works
    assert one.streams == 1 and all(len(p) == 16 and n == 256 for p, n in one.requests) and len(one.requests) == 2
    assert four.streams == 4 and len(four.requests) == 8 and all(48 <= len(p) <= 144 for p, _ in four.requests)
    assert sixteen.streams == 16 and len(sixteen.requests) == 32
    assert batch.streams == 128 and len(batch.requests) == 128
    assert all(32 <= len(p) <= 512 and n == 64 for p, n in batch.requests)
    # seeded: the same requests for livecast and the peer, run after run
    again = build_workloads(FakeTokenizer(), [1, 4, 16], 128, seed=0, rounds=2)
    assert [w.requests for w in again] == [w.requests for w in works]
    random.seed(1)  # the workloads never touch the global generator
    assert build_workloads(FakeTokenizer(), [1, 4], 0, seed=0, rounds=2)[1].requests == four.requests
