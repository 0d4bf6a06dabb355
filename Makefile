# Two commands for a newcomer: `make demo` (a node processing demo jobs) and `make test`.
# Each sets up its own virtualenv from pyproject.toml on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint clean prometheus

# The observability tests run a real Prometheus (a system package): installed here when it is missing.
prometheus:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
	  echo "Installing Prometheus (apt-get install prometheus) for the observability tests"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get install -y -q prometheus >/dev/null || { $$SUDO apt-get update -q >/dev/null && \
	    $$SUDO apt-get install -y -q prometheus >/dev/null; }; }

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/burrow demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint prometheus
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .burrow .pytest_cache
