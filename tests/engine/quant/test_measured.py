"""Kernel choices timed at load are kept per machine, so every process computes alike."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from livecast.engine.quant import measured as m


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LIVECAST_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("LIVECAST_REMEASURE", raising=False)
    m.forget()
    yield tmp_path
    m.forget()


def test_timed_once_then_read_back_by_a_new_process(cache):
    calls = []
    assert m.measured("choice", (1, 2), lambda: calls.append(1) or [8, "bfloat16"]) == [8, "bfloat16"]
    assert m.measured("choice", (1, 2), lambda: calls.append(1) or [64, "float32"]) == [8, "bfloat16"]
    assert calls == [1]
    stored = json.loads((cache / m.FILE_NAME).read_text())
    assert [v["value"] for v in stored.values()] == [[8, "bfloat16"]]
    # another process on this machine reads the choice instead of timing it again
    code = ("from livecast.engine.quant.measured import measured;"
            "print(measured('choice', (1, 2), lambda: [64, 'float32']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "LIVECAST_CACHE_DIR": str(cache)}).stdout
    assert out.strip() == "[8, 'bfloat16']"
    # other shapes and other names are other choices
    assert m.measured("choice", (1, 3), lambda: True) is True
    assert m.measured("other", (1, 2), lambda: False) is False
    assert len(json.loads((cache / m.FILE_NAME).read_text())) == 3


def test_remeasure_overwrites_and_a_bad_file_is_timed_again(cache, monkeypatch):
    m.measured("choice", "x", lambda: 1)
    monkeypatch.setenv("LIVECAST_REMEASURE", "1")
    assert m.measured("choice", "x", lambda: 2) == 2
    monkeypatch.delenv("LIVECAST_REMEASURE")
    m.forget()
    assert m.measured("choice", "x", lambda: 3) == 2
    (cache / m.FILE_NAME).write_text("{not json")
    m.forget()
    assert m.measured("choice", "x", lambda: 4) == 4


def test_an_unwritable_folder_only_costs_the_reuse(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("LIVECAST_CACHE_DIR", str(blocker / "sub"))  # a folder under a file
    m.forget()
    assert m.measured("choice", "y", lambda: 5) == 5
    assert m.measured("choice", "y", lambda: 6) == 5  # still one answer per process
    m.forget()
