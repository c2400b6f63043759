# Two commands do everything: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock | cksum | cut -d' ' -f1)
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install lock system-deps azurite run smoke demo unit test bench lint clean

# The exact versions of requirements.lock, then ragpipe itself (editable) without resolving again.
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

## lock: resolve pyproject.toml's ranges afresh (with dev extras) and write requirements.lock
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip && .lock-venv/bin/pip install --quiet '.[dev]'
	{ sed -n '1,2p' requirements.lock; .lock-venv/bin/pip freeze --exclude-editable | grep -v '^ragpipe' \
	  | sed 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/'; } > requirements.lock.new && mv requirements.lock.new requirements.lock
	rm -rf .lock-venv

## demo: start the embedded database, ingest the sample corpus, show a search and its SQL
demo: install
	$(BIN)/ragpipe db start
	$(BIN)/ragpipe ingest --collection sample
	$(BIN)/ragpipe ingest --collection sample_records
	@$(BIN)/python -m tools.demo "Does coffee affect blood vessel function?"

## run: the demo through Airflow: standalone Airflow 3 (UI on :8080), the sample DAGs triggered once
## (sample_azure only where Node.js can install its emulator)
run: install
	@command -v npm >/dev/null && $(MAKE) --no-print-directory azurite || echo "no npm: sample_azure will not run"
	$(BIN)/python -m tools.standalone run

## azurite: the Azure Blob emulator of sample_azure and the Azure tests (npm, pinned), in .azurite/
AZURITE_VERSION = 3.35.0
AZURITE = .azurite/node_modules/.bin/azurite-blob
azurite: $(AZURITE)
$(AZURITE):
	@command -v npm >/dev/null || $(MAKE) --no-print-directory system-deps SYSTEM_DEPS="node:nodejs npm:npm"
	npm install --silent --no-audit --no-fund --prefix .azurite azurite@$(AZURITE_VERSION)

## smoke: the stack of `make run` in a temp state dir: every sample DAG run must succeed, then all of it stops
smoke: install azurite
	RAGPIPE_HOME=$$(mktemp -d /tmp/ragpipe-smoke.XXXXXX) $(BIN)/python -m tools.standalone smoke

## system-deps: Debian packages the tests need (redis-server for the Celery test, chromium + chromium-driver for
## the search page test), installed as root when missing
SYSTEM_DEPS = redis-server:redis-server chromium:chromium chromedriver:chromium-driver
system-deps:
	@missing=$$(for dep in $(SYSTEM_DEPS); do command -v $${dep%%:*} >/dev/null || echo $${dep#*:}; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages the tests need: $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "the tests need: sudo apt-get install $$missing"; exit 1; fi; fi

## unit: the fast tier (seconds): chunking, configuration, settings, outcome classification; no database
unit: install
	$(BIN)/pytest -q -m unit

test: install system-deps azurite
	$(BIN)/pytest -q
	$(MAKE) --no-print-directory smoke

bench: install
	$(BIN)/python -m tools.benchmarks

lint: install
	$(BIN)/ruff check .

clean:
	-$(BIN)/ragpipe db stop
	rm -rf .ragpipe
