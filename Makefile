# Set-up and everyday commands. `make run` serves on an embedded PostgreSQL; `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
FHIRCLIENT_VERSION := 2.6.3
FHIRCLIENT := tests/auth/smart_app/fhir-client.js

.PHONY: install run test bench bench-search bench-cpu clean

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

# The tests start their own redis-server (tests/conftest.py) and drive Debian's chromium (the SMART app test);
# install them where they are missing (CI runs as root).
test: install $(FHIRCLIENT)
	@command -v redis-server >/dev/null && command -v chromium >/dev/null \
		|| { apt-get update -qq && apt-get install -y -qq redis-server chromium >/dev/null; }
	$(BIN)/python -m pytest -q

# The browser bundle of the fhirclient library (npm) for the SMART app test's pages.
$(FHIRCLIENT):
	cd $(@D) && npm pack --silent fhirclient@$(FHIRCLIENT_VERSION) >/dev/null \
		&& tar -xzf fhirclient-$(FHIRCLIENT_VERSION).tgz --strip-components=2 package/build/fhir-client.js \
		&& rm fhirclient-$(FHIRCLIENT_VERSION).tgz && touch fhir-client.js

bench: install
	$(BIN)/python bench/load.py

bench-search: install
	$(BIN)/python -m bench.search_scale

bench-cpu: install
	$(BIN)/python -m bench.cpu

clean:
	rm -rf $(VENV) .fhir-data
