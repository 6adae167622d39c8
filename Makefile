# metabench: `make test` and `make bench` build the environment they need on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
WHEELS := .cache/wheels
OUT ?= results/bench

.PHONY: setup test bench speed figures paper regress baseline clean

setup: $(STAMP)

$(STAMP): requirements.txt scripts/build_learn2learn_wheel.sh Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	bash scripts/build_learn2learn_wheel.sh $(PY) $(WHEELS)
	$(PY) -m pip install -q --no-deps $(WHEELS)/learn2learn-0.2.0-*.whl
	$(PY) -c "import learn2learn, higher, torch; print('torch', torch.__version__, 'learn2learn', learn2learn.__version__)"
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) .cache .pytest_cache
