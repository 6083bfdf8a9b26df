# Hubbub: `make run` installs and serves; `make test` installs and runs every check.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: run test lint typecheck pytest lock clean bench soak

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python requirements/main.lock pyproject.toml
	$(BIN)/pip install --quiet -r requirements/main.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

$(DEV_STAMP): $(STAMP) requirements/dev.lock
	$(BIN)/pip install --quiet -r requirements/dev.lock
	touch $@

run: $(STAMP)
	$(BIN)/hubbub serve

test: $(DEV_STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src
	$(BIN)/pytest

lint: $(DEV_STAMP)
	$(BIN)/ruff check src tests bench

typecheck: $(DEV_STAMP)
	$(BIN)/mypy src

pytest: $(DEV_STAMP)
	$(BIN)/pytest $(ARGS)

# The benchmark (docs/performance.md): `make bench` is the quick run (under 5 minutes);
# `make bench FULL=1` the full one (under 25). Needs redis-server and PostgreSQL on 127.0.0.1:5432.
bench: $(DEV_STAMP)
	$(BIN)/python -m bench.run $(if $(FULL),,--quick)

# The soak (bench/soak.py): 5,000 sockets with steady traffic against two instances on Redis and
# PostgreSQL for 30 minutes (SOAK_MINUTES=3 for a short one); memory, file descriptors and threads
# must stay flat and every message must arrive once. Not part of `make test`.
soak: $(DEV_STAMP)
	$(BIN)/python -m bench.soak

# Re-pin every dependency (needs `uv`: pip install uv).
lock:
	uv pip compile pyproject.toml --python-version 3.11 -o requirements/main.lock
	uv pip compile pyproject.toml --python-version 3.11 --extra dev -o requirements/dev.lock

clean:
	rm -rf $(VENV) .hubbub .pytest_cache .mypy_cache .ruff_cache
