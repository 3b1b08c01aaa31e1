# make demo : set up .venv (first run only) and run the main job on the embedded default
# make test : set up .venv (first run only) and run the whole test suite
# make check-languages : every advertised language's default vocabulary on its full corpus
#                        (network to Debian, CPU-heavy; e.g. CHECK_ARGS="--langs vi hi")
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CACHE ?= $(HOME)/.cache/trelm_fairseq

.PHONY: demo test eval setup clean-venv check-languages

setup: $(STAMP)

# torch first (the CPU wheel on disk), then the pinned pure-Python deps, then
# fairseq-fixed compiled against that torch (no build isolation, no cache: a
# cached wheel built against another torch breaks at import).
$(STAMP): requirements.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-cache-dir --no-build-isolation --no-deps fairseq-fixed==0.12.3.1
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: $(STAMP)
	. $(VENV)/bin/activate && ./scripts/run_tests.sh

check-languages: $(STAMP)
	. $(VENV)/bin/activate && python scripts/check_languages.py $(CHECK_ARGS)

demo: $(STAMP)
	. $(VENV)/bin/activate && ./scripts/demo.sh $(DEMO_ARGS)

clean-venv:
	rm -rf $(VENV)

# the main job with 3 pre-training seeds per model (seed 1 reused from make demo; mean and std in the report)
eval: $(STAMP)
	. $(VENV)/bin/activate && ./scripts/demo.sh --pretrain-seeds 3 $(DEMO_ARGS)
