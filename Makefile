# `make demo` and `make test` each do the whole set-up on a fresh machine, then run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.reelscope-installed
DEMO ?= demo

.PHONY: install browser demo test clean

install: $(STAMP)

# torch is pinned and installed first: unpinned, a dependency would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/reelscope sample $(DEMO)/media --broken
	$(BIN)/reelscope run $(DEMO)/media --output $(DEMO)/tables --profile tiny
	$(BIN)/reelscope digest --output $(DEMO)/tables

# The HTML page test renders in Debian's headless chromium.
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; fi; }

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(DEMO) .pytest_cache
