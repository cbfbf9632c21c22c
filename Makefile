# One entry point for people and CI: `make run`, `make test`, `make bench`, `make lint`.
# `make test` runs the whole suite; `make test-fast` only the in-process tests (no socket, no
# process: tests/tiers.py marks the others `live` at collection, and a fast test that opens one
# fails), in well under a minute.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup run standin test test-fast lint format bench bench-memory clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-standin.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	# This project itself (editable), which installs the `avatar` command in $(BIN).
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

run: setup
	./scripts/run

standin: setup
	./scripts/standin

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not live" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy avatar_service comfyui_client.py

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: setup
	$(BIN)/python -m bench.latency --runs 200 --update-docs
	$(BIN)/python -m bench.throughput --update-docs
	$(BIN)/python -m bench.failover --update-docs
	$(BIN)/python -m bench.scale --update-docs
	$(BIN)/python -m bench.upload_memory --update-docs
	$(BIN)/python -m bench.soak --update-docs
	$(BIN)/python -m bench.faults --update-docs

bench-memory: setup
	$(BIN)/python -m bench.upload_memory --update-docs

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
