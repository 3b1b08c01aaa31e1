# make demo : set up .venv (first run only) and run the main job on the embedded default
# make test : set up .venv (first run only) and run the whole test suite
# make study : the study budget (8x the demo's pre-training updates, one seed; ~2 h on 2 cores)
# make ablations : the component grid, 3 pre-training seeds at the demo budget (ABL_LANG=tr; ~3.5 h on 2 cores)
# make figures : check every figure README.md and docs/ link to a committed row under results/
#                (FIGURES_ARGS=--write regenerates the generated tables)
# make check-languages : every advertised language's default vocabulary on its full corpus
#                        (network to Debian, CPU-heavy; e.g. CHECK_ARGS="--langs vi hi")
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CACHE ?= $(HOME)/.cache/trelm_fairseq

.PHONY: demo test eval study ablations setup clean-venv check-languages figures

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

figures: $(STAMP)
	. $(VENV)/bin/activate && python scripts/figures.py $(FIGURES_ARGS)

check-languages: $(STAMP)
	. $(VENV)/bin/activate && python scripts/check_languages.py $(CHECK_ARGS)

demo: $(STAMP)
	. $(VENV)/bin/activate && ./scripts/demo.sh $(DEMO_ARGS)

clean-venv:
	rm -rf $(VENV)

# the main job with 3 pre-training seeds per model (seed 1 reused from make demo; mean and std in the report)
eval: $(STAMP)
	. $(VENV)/bin/activate && ./scripts/demo.sh --pretrain-seeds 3 $(DEMO_ARGS)

# the study budget (docs/main-job.md, "The study budget"): 8x the demo's pre-training updates
# (TreLM 192 / 192+192 / 384; the baselines at equal training FLOPs), the demo's fine-tuning
# budgets, a curve point every 24 updates, one pre-training seed, bit-reproducible data; its own work and results dirs
STUDY_LANG ?= tr
study: $(STAMP)
	. $(VENV)/bin/activate && TRELM_LANG=$(STUDY_LANG) ./scripts/demo.sh --work runs/$(STUDY_LANG)-study \
		--results results/$(STUDY_LANG)-study --stage1 192 --stage2 192 --stage4 384 --validate-every 24 --deterministic $(DEMO_ARGS)

# the component ablations (docs/main-job.md, "Component ablations"): the main job's TreLM recipe
# with one component removed or replaced at a time, probed after every stage, 3 pre-training
# seeds at the demo budget on bit-reproducible data; tables and verdicts in results/<lang>-ablations-v2
# (v2: today's recipe, 2b's MLM on S; results/<lang>-ablations hold the grids of the recipe before,
# 2b's MLM on T, and recipe_ablation refuses to resume a results file of another recipe)
ABL_LANG ?= tr
ABL_SEEDS ?= 1,2,3
ABL_NAME ?= ablations-v2
ablations: $(STAMP)
	. $(VENV)/bin/activate && trelm-prepare --src en --tgt $(ABL_LANG) --out runs/$(ABL_LANG)/data \
		--vocab-size 16000 --map-args=--deterministic && \
	python experiments/recipe_ablation.py --grid --data runs/$(ABL_LANG)/data --out runs/$(ABL_NAME)-$(ABL_LANG) \
		--seeds $(ABL_SEEDS) --results results/$(ABL_LANG)-$(ABL_NAME)
