# Two commands do everything: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install system-deps run smoke demo test bench lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

## demo: start the embedded database, ingest the sample corpus, show a search and its SQL
demo: install
	$(BIN)/ragpipe db start
	$(BIN)/ragpipe ingest --collection sample
	$(BIN)/ragpipe ingest --collection sample_records
	@$(BIN)/python -m pipelines.demo "Does coffee affect blood vessel function?"

## run: the demo through Airflow: standalone Airflow 3 (UI on :8080), the sample DAGs triggered once
run: install
	$(BIN)/python -m pipelines.standalone run

## smoke: the stack of `make run` in a temp state dir: every sample DAG run must succeed, then all of it stops
smoke: install
	RAGPIPE_HOME=$$(mktemp -d /tmp/ragpipe-smoke.XXXXXX) $(BIN)/python -m pipelines.standalone smoke

## system-deps: Debian packages the tests need (redis-server for the Celery test), installed as root when missing
system-deps:
	@command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing redis-server (Debian package) for tests/test_distributed.py"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null; \
	  else echo "tests/test_distributed.py needs redis-server: sudo apt-get install redis-server"; exit 1; fi; }

test: install system-deps
	$(BIN)/pytest -q
	$(MAKE) --no-print-directory smoke

bench: install
	$(BIN)/python -m pipelines.benchmarks

lint: install
	$(BIN)/ruff check .

clean:
	-$(BIN)/ragpipe db stop
	rm -rf .ragpipe
