# Set-up and everyday commands. `make run` serves on an embedded PostgreSQL; `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install run test bench bench-search clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(INSTALLED): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m fhir_server.validation.build
	touch $(INSTALLED)

install: $(INSTALLED)

run: install
	$(BIN)/fhir-server serve

# The tests start their own redis-server (tests/conftest.py); install it where it is missing (CI runs as root).
test: install
	@command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/load.py

bench-search: install
	$(BIN)/python -m bench.search_scale

clean:
	rm -rf $(VENV) .fhir-data
