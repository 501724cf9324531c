# sipdialer front door: `make test` is what CI runs (via .ci/run, with CI=true).
#
#   make venv    .venv with the package installed editable + [test] extras
#   make peers   the Debian programs the tests drive (root only; otherwise just report)
#   make test    lint + format check + mypy --strict + the whole pytest suite
#   make test-unit  the pure tests only (tests/unit: no sockets, no peers; seconds)
#   make lint    ruff check + ruff format --check
#   make fmt     ruff format + ruff check --fix
#   make demo    one real call end to end on loopback (`sipdialer demo`)
#   make clean   caches and build output (keeps .venv; `make distclean` removes it too)

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp
LINT_PATHS := sipdialer tests bench

# programs the peer fixtures need, and the Debian packages that provide them
PEER_BINARIES := redis-server kamailio kamcmd baresip sipp sox dnsmasq
# dnsmasq-base: the binary only (the `dnsmasq` package would install a system DNS service)
PEER_PACKAGES := redis-server kamailio kamailio-tls-modules baresip-core sip-tester sox \
	libsox-fmt-base dnsmasq-base openssl
# optional, for the side-by-side bench only (`python bench/bridge.py --against rtpengine`),
# not installed by `make peers` nor needed by `make test`: rtpengine-daemon
# (apt-get install --no-install-recommends rtpengine-daemon, with a policy-rc.d exiting 101
# as `make peers` uses, so that its service does not start)
APT_GET ?= apt-get
# exit 101 = "do not start services" while the packages install (kamailio, redis)
POLICY_RC ?= /usr/sbin/policy-rc.d

.PHONY: venv peers test test-unit lint fmt demo clean distclean

venv: $(STAMP)

# re-install (and re-build the relay's C fast path) when its sources are newer than the stamp
$(STAMP): pyproject.toml setup.py sipdialer/rtp/_fastrelay.c
	@if ! command -v cc >/dev/null 2>&1 && ! command -v gcc >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "venv: no C compiler -> apt-get install gcc libc6-dev python3-dev"; \
			$(APT_GET) install -y -q gcc libc6-dev python3-dev; \
		else \
			echo "venv: a C compiler is needed (apt-get install gcc libc6-dev python3-dev)"; \
			exit 1; \
		fi; \
	fi
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $@

peers:
	@missing=""; \
	for b in $(PEER_BINARIES); do \
		PATH="$$PATH:/usr/sbin:/sbin" command -v "$$b" >/dev/null 2>&1 || missing="$$missing $$b"; \
	done; \
	ls /usr/lib/*/kamailio/modules/tls.so >/dev/null 2>&1 || missing="$$missing kamailio-tls-modules"; \
	if [ -z "$$missing" ]; then \
		echo "peers: all present ($(PEER_BINARIES))"; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "peers: missing:$$missing -> apt-get install $(PEER_PACKAGES)"; \
		created=0; \
		if [ ! -e $(POLICY_RC) ]; then \
			printf '#!/bin/sh\nexit 101\n' >$(POLICY_RC); \
			chmod +x $(POLICY_RC); \
			created=1; \
		fi; \
		trap 'if [ "$$created" = 1 ]; then rm -f $(POLICY_RC); fi' EXIT; \
		export DEBIAN_FRONTEND=noninteractive; \
		$(APT_GET) update -qq; \
		$(APT_GET) install -y -qq --no-install-recommends $(PEER_PACKAGES); \
	else \
		echo "peers: missing:$$missing (not root: not installing $(PEER_PACKAGES));"; \
		echo "peers: tests that need them fail under CI=true and are skipped otherwise"; \
	fi

test: venv peers
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy
	$(BIN)/pytest -q

test-unit: venv
	$(BIN)/pytest -q tests/unit

lint: venv
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy

fmt: venv
	$(BIN)/ruff format $(LINT_PATHS)
	$(BIN)/ruff check --fix $(LINT_PATHS)

# one real call over loopback: simulated trunk + phones in-process, real service and API;
# uses a Redis at 127.0.0.1:6379 if one answers, else a built-in stand-in (see --help)
demo: venv
	$(BIN)/sipdialer demo

clean:
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
