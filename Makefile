# One entry point for people and CI: `make run`, `make test`, `make bench`, `make lint`.
# `make test` runs the whole suite; `make test-fast` only the in-process tests (no socket, no
# process: tests/tiers.py marks the others `live` at collection, and a fast test that opens one
# fails), in well under a minute.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

NODE_CLIENT := clients/typescript

.PHONY: setup setup-node run standin test test-fast lint format bench bench-memory clean

setup: $(VENV)/.installed

# The TypeScript client's packages (npm ci, from its package-lock.json), when node is here:
# tests/test_typescript_client.py lints the document and type-checks the client with them
# (skipped without node or the npm registry, unless CI=true or REQUIRE_NODE=1).
setup-node: $(NODE_CLIENT)/node_modules/.installed

$(NODE_CLIENT)/node_modules/.installed: $(NODE_CLIENT)/package.json $(NODE_CLIENT)/package-lock.json
	@if command -v npm >/dev/null; then \
	  cd $(NODE_CLIENT) && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed \
	    || echo "npm ci failed in $(NODE_CLIENT): the TypeScript client's tests will say why"; \
	else \
	  echo "node/npm not found: the TypeScript client's tests will be skipped"; \
	fi

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

test: setup setup-node
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
	$(BIN)/python -m bench.latency --runs 200 --fresh-photos --update-docs
	$(BIN)/python -m bench.throughput --update-docs
	$(BIN)/python -m bench.failover --update-docs
	$(BIN)/python -m bench.scale --update-docs
	$(BIN)/python -m bench.agents --update-docs
	$(BIN)/python -m bench.upload_memory --update-docs
	$(BIN)/python -m bench.soak --update-docs
	$(BIN)/python -m bench.faults --update-docs

bench-memory: setup
	$(BIN)/python -m bench.upload_memory --update-docs

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache $(NODE_CLIENT)/node_modules $(NODE_CLIENT)/build
