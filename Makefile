# Every target creates or reuses .venv in the checkout and installs what it needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo lint test bench chaos clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/flowstate demo

# ruff (rules in pyproject.toml), mypy over the package, and mypy --strict over the checkpoint protocol,
# the runner, the executor ports and the public API. No formatter: the code is wrapped by hand.
STRICT := src/flowstate/checkpoint src/flowstate/__init__.py src/flowstate/dataflow.py src/flowstate/windowed.py \
          src/flowstate/functions.py src/flowstate/aggregates.py src/flowstate/state/api.py src/flowstate/runner \
          src/flowstate/executors/base.py src/flowstate/executors/choice.py src/flowstate/executors/threads.py
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --strict --follow-imports=silent --cache-dir .mypy_cache/strict $(STRICT)

# Two pytest-xdist workers, one test file per worker at a time (--dist loadfile: the tests of a
# file never run beside each other): the suite mostly waits on timers and processes.
test: $(STAMP)
	bash .ci/services
	$(PY) -m pytest -n 2 --dist loadfile

bench: $(STAMP)
	$(PY) benchmarks/run.py --write

# The long chaos run (by hand, about an hour): every oracle workload (sequence, bank, windows, joins, ttl),
# every mode, 1,500+ kills; the results replace the chaos section of docs/reliability.md.
chaos: $(STAMP)
	$(PY) -m flowstate.testing.campaign --write docs/reliability.md

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
