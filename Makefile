# hopcast — developer entry points. `make demo` and `make test` are the two a newcomer needs.
PY      ?= $(shell command -v python3.11 || command -v python3)
VENV    ?= .venv
BIN     := $(VENV)/bin
PYTHON  := $(BIN)/python
STAMP   := $(VENV)/.installed

.PHONY: help install services demo test check fmt lint typecheck test-fast bench bench-graph bench-graph-quick \
	bench-ingest bench-ingest-quick bench-broadcast bench-broadcast-quick bench-scale bench-scale-quick \
	bench-soak bench-soak-quick bench-looplag bench-looplag-quick bench-store-writes \
	bench-store-writes-quick bench-mixed bench-mixed-quick clean

help:
	@echo "make demo        run the whole system on the embedded default (hopcast run: the demo company's"
	@echo "                 logs and CDC through the pipeline into LMDB), http://127.0.0.1:8321/docs"
	@echo "make test        the full test suite"
	@echo "make check       ruff format --check, ruff check, mypy on src/, fast tests"
	@echo "make bench       every benchmark (make bench-graph: the graph store vs ladybug and sqlite3;"
	@echo "                 make bench-ingest: demo records through the engine into LMDB, one core;"
	@echo "                 make bench-broadcast: live trigger to 10k-100k devices vs python-socketio;"
	@echo "                 make bench-scale: the Flink job vs the embedded engine, queries on Redis vs LMDB;"
	@echo "                 make bench-store-writes: graph-store writes into Redis vs LMDB vs raw Redis;"
	@echo "                 make bench-soak: hopcast run for 30 min at 2k events/s, memory and freshness flat?;"
	@echo "                 make bench-looplag: event-loop lag while 10k devices go live and a materialise runs;"
	@echo "                 make bench-mixed: HTTP reads with concurrent writes vs FastAPI + sqlite3)"

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) (Python 3.11+)"; exit 1; }
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The demo needs the server extra only (~85 MB installed, about a minute), not the [dev] extras
# (PyFlink, Playwright, Beam: ~1.3 GB). A venv already holding [dev] is used as it is.
DEMO_STAMP := $(VENV)/.installed-demo
$(DEMO_STAMP): pyproject.toml
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) (Python 3.11+)"; exit 1; }
	test -d $(VENV) || $(PY) -m venv $(VENV)
	@if [ -f $(STAMP) ] && [ $(STAMP) -nt pyproject.toml ]; then \
		echo "using the [dev] install in $(VENV)"; \
	else \
		$(PYTHON) -m pip install --quiet --upgrade pip && \
		$(PYTHON) -m pip install --quiet -e '.[server]'; \
	fi
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/hopcast run

test: $(STAMP) services
	$(BIN)/pytest -q

# Redis, PostgreSQL, Java/Maven and the Kafka broker's jars for the tests (apt as root; a
# no-op once present). The tests start and stop the servers themselves.
services:
	deploy/install.sh

test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow"

fmt: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

lint: $(STAMP)
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test-fast

bench: bench-graph bench-ingest bench-broadcast bench-scale bench-store-writes bench-soak bench-looplag \
	bench-mixed

bench-graph: $(STAMP)
	$(PYTHON) bench/graph.py

bench-graph-quick: $(STAMP)
	$(PYTHON) bench/graph.py --quick

bench-ingest: $(STAMP)
	$(PYTHON) bench/ingest.py

bench-ingest-quick: $(STAMP)
	$(PYTHON) bench/ingest.py --quick

bench-broadcast: $(STAMP)
	$(PYTHON) bench/broadcast.py

bench-broadcast-quick: $(STAMP)
	$(PYTHON) bench/broadcast.py --quick

# Starts its own Kafka and Redis on free loopback ports (deploy/), stops them after.
bench-scale: $(STAMP) services
	$(PYTHON) bench/scale.py

bench-scale-quick: $(STAMP) services
	$(PYTHON) bench/scale.py --quick

# Starts its own Redis and a 3-node Redis Cluster on free loopback ports, stops them after.
bench-store-writes: $(STAMP) services
	$(PYTHON) bench/store_writes.py --cluster

bench-store-writes-quick: $(STAMP) services
	$(PYTHON) bench/store_writes.py --quick

# hopcast run (2,000 interactions/s, 1,000 devices) for 30 minutes: anonymous memory and
# freshness sampled every 10 s, flat after warm-up or not (exit 1).
bench-soak: $(STAMP)
	$(PYTHON) bench/soak.py

bench-soak-quick: $(STAMP)
	$(PYTHON) bench/soak.py --quick

bench-looplag: $(STAMP)
	$(PYTHON) bench/looplag.py

bench-looplag-quick: $(STAMP)
	$(PYTHON) bench/looplag.py --quick

# hopcast serve and a FastAPI + sqlite3 peer on the same graph: the read mix alone, then with
# 2,000 writes/s; read QPS kept and write latency.
bench-mixed: $(STAMP)
	$(PYTHON) bench/mixed.py

bench-mixed-quick: $(STAMP)
	$(PYTHON) bench/mixed.py --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache data bench/results/tmp
