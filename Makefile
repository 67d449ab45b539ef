# All set-up is idempotent: apt packages and the virtualenv are installed only when missing or stale.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APT_PKGS := tesseract-ocr tesseract-ocr-eng nginx chromium
PYTEST_ARGS ?=

.PHONY: setup apt demo test test-fast bench lint clean

setup: apt $(STAMP)

apt:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  echo "installing apt packages:$$missing"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# torch is installed first and pinned: the CPU wheel; an unpinned torch pulls a multi-GB CUDA build
$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

demo: setup
	@PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(PY) -m tests.bench.index_bench
	$(PY) -m tests.bench.query_bench

# mypy runs on the package as it installs (indexer/ and retriever/ as manualrag.indexer/.retriever):
# scripts/typecheck.py gives it that shape; settings in pyproject.toml [tool.mypy]
lint: setup
	$(VENV)/bin/ruff check .
	$(PY) scripts/typecheck.py

clean:
	rm -rf data/index
