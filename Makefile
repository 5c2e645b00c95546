# Every target creates .venv on first use; nothing but Python 3.11 is needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
RUN_STAMP := $(VENV)/.installed-run
BIND ?= 127.0.0.1:8000

.PHONY: run test lint unit bench screenshot install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# `make run` needs only the runtime (a small venv); `make test` and the rest add the dev extras.
$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $(RUN_STAMP)

install: $(STAMP)

run: $(RUN_STAMP)
	$(BIN)/gateway demo --bind $(BIND)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python scripts/import_graph.py --quiet  # fails on an import cycle

unit: $(STAMP)
	$(BIN)/pytest -n auto -q

test: lint unit

bench: $(STAMP)
	$(BIN)/pip install -q -e '.[bench]'
	@command -v wrk >/dev/null || (command -v apt-get >/dev/null && apt-get install -y -qq wrk) || { echo "wrk is needed: apt-get install wrk"; exit 1; }
	$(BIN)/python benchmarks/run.py --throughput --workers --memory --json benchmarks/results/run.json
	$(BIN)/python benchmarks/width.py --json benchmarks/results/width.json  # 1..30 calls, ~3 min
	$(BIN)/python benchmarks/chart.py benchmarks/results/width.json  # redraws docs/width.png
	$(BIN)/python benchmarks/payload.py --json benchmarks/results/payload.json  # 1 KB..5 MB
	$(BIN)/python benchmarks/batching.py --json benchmarks/results/batching.json
	$(BIN)/python benchmarks/run.py --latency --json benchmarks/results/latency.json
	GATEWAY_LOAD_REQUESTS=10000 $(BIN)/pytest -q -s tests/test_load.py  # the 10k storm
	$(BIN)/python benchmarks/hostile.py  # issue 11's floods: RSS and /healthz under attack
	$(BIN)/python benchmarks/auth_cost.py  # issue 15: auth + limits on vs off, same run

# Redraws docs/dashboard.png from a live demo (Debian's chromium; no browser is downloaded).
screenshot: $(STAMP)
	$(BIN)/python scripts/dashboard_png.py --out docs/dashboard.png

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
