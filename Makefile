# metabench: `make test` and `make bench` build the environment they need on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
WHEELS := .cache/wheels
# `make bench` and `make paper` measure this machine into git-ignored runs/ folders; the
# committed results/ folders are rewritten only by the *-results targets (maintainers).
OUT ?= runs/bench
PAPER_OUT ?= runs/paper
# Sweeps run WORKERS processes of one torch thread each: at these tiny sizes ops, not flops,
# bound the time, so two 1-thread processes do ~2x the work of one 2-thread process.
WORKERS ?= 2
# pytest processes of `make test` (these machines have 2 cores).
TEST_WORKERS ?= 2
# What the speed tables compare every meta-iteration with (ALGORITHM:BACKEND; column x_vs_<backend>_<algorithm>).
YARDSTICK ?= maml:l2l

.PHONY: setup test test-fast browser-check install-check bench bench-results speed figures paper paper-results regress baseline clean

setup: $(STAMP)

$(STAMP): requirements.txt scripts/build_learn2learn_wheel.sh Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	bash scripts/build_learn2learn_wheel.sh $(PY) $(WHEELS)
	$(PY) -m pip install -q --no-deps $(WHEELS)/learn2learn-0.2.0-*.whl
	$(PY) -c "import learn2learn, higher, torch; print('torch', torch.__version__, 'learn2learn', learn2learn.__version__)"
	touch $(STAMP)

# The tests (two processes: pytest-xdist), then the result-number regression check (CI fails on either).
test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) tests
	$(MAKE) regress

# A contributor's quick loop: the tests not marked `slow` (those train for hundreds of iterations or
# start subprocesses that import torch), no regression sweep.
test-fast: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not slow" tests

# The committed results/baseline/index.html (or PAGE=...) in headless Chromium, installed if missing:
# it loads without console errors and its script ran; screenshot in .cache/browser-check.png.
PAGE ?= results/baseline/index.html
browser-check:
	bash scripts/browser_check.sh $(PAGE) .cache/browser-check.png

# `pip install -e .` and `pip install .` into fresh virtual environments (no download: they see
# .venv's packages), then the installed `metabench` command from another folder (CI runs it).
install-check: setup
	bash scripts/check_install.sh $(PY)

# The main job: the bench.toml quality sweep, the speed benchmarks, tables and figures, into
# $(OUT) (default runs/bench/, git-ignored; a rerun resumes its own previous run).
bench: setup
	$(PY) -m benchmarks run --config benchmarks/configs/bench.toml --out $(OUT) --workers $(WORKERS) --threads 1
	$(MAKE) speed OUT=$(OUT)
	@echo "bench: tables in $(OUT)/tables.md, figures in $(OUT)/figures/, speed in $(OUT)/speed.md"

# Maintainers: measure into the committed results/bench/ (then review `git diff --stat results/bench`).
bench-results:
	$(MAKE) bench OUT=results/bench

speed: setup
	mkdir -p $(OUT)
	$(PY) -m pytest -q benchmarks/speed --benchmark-json=$(OUT)/speed.json
	$(PY) -m benchmarks.speed.table $(OUT)/speed.json $(OUT) --yardstick $(YARDSTICK)

# Tables and figures regenerated from every stored result folder (no training).
figures: setup
	for dir in results/*/; do if [ -d "$$dir/runs" ]; then $(PY) -m benchmarks report "$$dir" || exit 1; fi; done

# The result numbers of README.md, docs/paper-reproduction.md and docs/speed.md: their generated
# blocks rewritten from the committed CSVs under results/ (after `make figures` or a *-results target).
.PHONY: readme
readme: setup
	$(PY) -m benchmarks.readme

# Finn et al. 2017's sinusoid setup, every algorithm, 3 seeds, K in {5, 10, 20}, into $(PAPER_OUT): a quick
# reproduction (about 45 minutes of an idle 2-core machine). The committed comparison is the reference's.
paper: setup
	$(PY) -m benchmarks run --config benchmarks/configs/paper.toml --out $(PAPER_OUT) --workers $(WORKERS) --threads 1

# Maintainers: the committed reference runs (reference.toml: the same setup with 10 seeds on independent
# streams, Reptile also at S = 5, pre-training's test-time step chosen on validation) into results/reference/,
# with its report (resumable; about 4 core-hours of training).
paper-results: setup
	$(PY) -m benchmarks run --config benchmarks/configs/reference.toml --out results/reference --workers $(WORKERS) --threads 1

# Issue 23's fidelity ablations (benchmarks/ablation.py: `ABLATIONS`, one --set list each, over
# benchmarks/configs/ablation.toml) into $(ABLATIONS_OUT)/<name>/, then their report against the
# reference runs: $(ABLATIONS_OUT)/ablations.md and .csv. Resumable; each is 10 seeds x 70,000 iterations.
ABLATIONS_OUT ?= results/ablations
REFERENCE_OUT ?= results/reference
.PHONY: ablations
ablations: setup
	$(PY) -m benchmarks.ablation $(ABLATIONS_OUT) --baseline $(REFERENCE_OUT) --run --workers $(WORKERS)

# Rerun the CI config from scratch and compare with the committed baseline.
regress: setup
	rm -rf .cache/regress-candidate
	$(PY) -m benchmarks run --config benchmarks/configs/ci.toml --out .cache/regress-candidate --threads 1
	$(PY) -m benchmarks regress --baseline results/baseline --candidate .cache/regress-candidate

# Intentionally replace the baseline (then review `git diff results/baseline`).
baseline: setup
	rm -rf results/baseline
	$(PY) -m benchmarks run --config benchmarks/configs/ci.toml --out results/baseline --threads 1

clean:
	rm -rf $(VENV) .cache .pytest_cache
