# Two commands do everything: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install run demo test bench lint clean

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

test: install
	$(BIN)/pytest -q

bench: install
	$(BIN)/python -m pipelines.benchmarks

lint: install
	$(BIN)/ruff check .

clean:
	-$(BIN)/ragpipe db stop
	rm -rf .ragpipe
