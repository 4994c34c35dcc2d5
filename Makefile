# Every target builds its own virtual environment from nothing (.venv), so a fresh clone needs
# only python3 and the package registries.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS := test,docs,dotenv,cli,demo,vectorstores,embeddings,llamaindex,dask,prometheus,bench
# torch pinned for the project's own environments (the local CPU wheel): see the file.
CONSTRAINTS := constraints/test.txt
SOURCES := zerorag_guard tests benchmarks scripts tools debug_memory_usage.py

.PHONY: venv lint typecheck docs test test-fast bench demo clean reliability pictures

$(BIN)/.installed: setup.cfg setup.py pyproject.toml $(CONSTRAINTS)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[$(EXTRAS)]'
	touch $@

venv: $(BIN)/.installed

# The import contracts (.importlinter) keep the one-way flow between the folders: memory
# readings -> monitor -> budget and leaks -> front ends, with no circles; and no module passes the
# 400 lines of the style guide.
lint: venv
	$(BIN)/ruff check $(wildcard $(SOURCES))
	$(BIN)/ruff format --check $(wildcard $(SOURCES))
	$(BIN)/lint-imports
	$(BIN)/python tools/max_lines.py 400 zerorag_guard

typecheck: venv
	$(BIN)/mypy zerorag_guard

docs: venv
	$(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html

# The whole suite: lint, types, docs, tests, and one smoke pass over the benchmarks (timing off).
# The leak profiler's tests run in a pytest of their own: its censuses walk every live object,
# and the modules the store tests import (langchain, chroma, qdrant) made each of them about 3x
# slower (one: 7.6 s alone, 21.3 s beside tests/integrations/test_store_suites.py). The
# LlamaIndex tests run in one of their own too: they left the process over 1,000 MB (the default
# budget ceiling), and every later store test that used the default ceiling failed.
test: lint typecheck docs
	$(BIN)/pytest tests/leaks/test_leaks.py --durations=5
	$(BIN)/pytest tests/integrations/test_llamaindex.py --durations=5
	$(BIN)/pytest --ignore=tests/leaks/test_leaks.py --ignore=tests/integrations/test_llamaindex.py --durations=25
	$(BIN)/pytest benchmarks --benchmark-disable -q --durations=10

test-fast: venv
	$(BIN)/pytest -x -q -m "not slow and not system"

# Timed benchmarks; writes docs/benchmarks.md from the JSON.
bench: venv
	mkdir -p .benchmarks
	$(BIN)/pytest benchmarks --benchmark-only --benchmark-json=.benchmarks/latest.json -q
	$(BIN)/python benchmarks/report.py .benchmarks/latest.json docs/benchmarks.md

demo: venv
	$(BIN)/zerorag-guard demo

# The docs' pictures, from a real run: the demo's memory timeline, guarded and unguarded, with
# its budget line (docs/images/demo-timeline.png, shown on the demo and budget pages).
pictures: venv
	$(BIN)/zerorag-guard demo --compare --out .pictures
	mkdir -p docs/images
	cp .pictures/demo-timeline.png docs/images/demo-timeline.png

# The system tests (real cgroup, soak, faults, hostile input) writing their figures to
# .reliability/figures.json, then docs/reliability.md rendered from them. The soak runs 120 s
# here (60 s in make test, to keep the suite under its time); a longer one:
# make reliability RELIABILITY_ARGS=--soak-seconds=1800
RELIABILITY_ARGS ?= --soak-seconds=120
reliability: venv
	rm -f .reliability/figures.json
	ZERORAG_RELIABILITY_JSON=.reliability/figures.json $(BIN)/pytest tests/system -q $(RELIABILITY_ARGS)
	$(BIN)/python tests/system/report.py .reliability/figures.json docs/reliability.md

clean:
	rm -rf $(VENV) docs/_build .pytest_cache .mypy_cache .ruff_cache .benchmarks .reliability .pictures
