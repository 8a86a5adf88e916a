# fvmatch: `make demo` runs the pipeline end to end on built-in data, `make test` runs the tests.
# Both create .venv when it is missing and install what they need; a second run installs nothing
# (the stamp file is keyed on the dependency files).

SHELL := /bin/bash
VENV  := .venv
VPY   := $(VENV)/bin/python
# First supported interpreter found (3.11 preferred, then 3.12, 3.10); override with `make PYTHON=...`.
PYTHON ?= $(shell for p in python3.11 python3.12 python3.10; do command -v $$p >/dev/null && { echo $$p; break; }; done)
DEPS_HASH := $(shell cat pyproject.toml Makefile | sha256sum | cut -c1-12)
STAMP := $(VENV)/.installed-$(DEPS_HASH)
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
WITH_DISPLAY := tools/with-display.sh
PYTEST_ARGS ?=

# The online task's jsPsych (npm ci from the lock file; stamp keyed on it), and chromium for its browser tests.
NPM_DIR := online/web
NPM_STAMP := $(NPM_DIR)/node_modules/.installed-$(shell cat $(NPM_DIR)/package-lock.json | sha256sum | cut -c1-12)

.PHONY: demo demo-control test test-slow venv clean-demo bench help online-deps

help:
	@echo "make demo   - generate a demo stimulus set, run simulated participants, analyse (data/*/demo)"
	@echo "make demo-control - the control: original vs silent-units network, image-observer sessions, one comparison report"
	@echo "make test   - run the test suite (window tests under Xvfb)"
	@echo "make test-slow - run the slow repetition tests (coverage of intervals over simulations)"
	@echo "make bench  - run the CPU-runnable benchmarks in bench/"
	@echo "make online-deps - install jsPsych (npm ci) and chromium for the online task and its tests"

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@if [ -z "$(PYTHON)" ]; then echo "error: need Python 3.10-3.12 (python3.11 recommended) on PATH" >&2; exit 1; fi
	@test -x $(VPY) || { echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet $(TORCH_PINS)
	$(VPY) -m pip install --quiet -e '.[test]'
	@rm -f $(VENV)/.installed-*
	@touch $@

online-deps: $(NPM_STAMP)

$(NPM_STAMP): $(NPM_DIR)/package-lock.json
	@tools/browser-deps.sh
	cd $(NPM_DIR) && npm ci --no-audit --no-fund --loglevel=error
	@rm -f $(NPM_DIR)/node_modules/.installed-*
	@touch $@

test: $(STAMP) $(NPM_STAMP)
	@tools/browser-deps.sh
	@$(WITH_DISPLAY) $(VPY) -m pytest $(PYTEST_ARGS)

# The repetition tests (interval coverage over many simulated data sets); minutes, not in `make test`.
test-slow: $(STAMP)
	@$(WITH_DISPLAY) $(VPY) -m pytest -m slow $(PYTEST_ARGS)

demo: $(STAMP)
	@$(WITH_DISPLAY) tools/demo.sh

# The control condition (Geirhos et al. 2023) on built-in data; not part of `make test` (its pieces are tested).
demo-control: $(STAMP)
	@$(WITH_DISPLAY) tools/demo_control.sh

bench: $(STAMP)
	$(VPY) bench/exemplars.py --quick
	$(VPY) bench/render.py --quick
	$(VPY) bench/analysis.py
	$(VPY) bench/online_server.py --quick
	$(VPY) bench/path_similarity.py --quick

clean-demo:
	rm -rf data/stimuli/demo data/sessions/demo data/results/demo data/collections/builtin
