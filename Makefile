# The two commands of the README: `make run` (app with demo data) and `make test` (the whole suite).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PGHOST ?= 127.0.0.1
TEST_ENV := DB_POOL_MIN=0 TEST_DATABASE_NAME=test_chat_$$$$ DATABASE_URL=postgres://postgres@$(PGHOST):5432/chat REDIS_URL=redis://127.0.0.1:6379/0 \
	CHANNEL_PREFIX=chattest$$$$

.PHONY: install run run-embedded test lint browser promtool mutation

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q -e ./clients/python
	touch $@

install: $(BIN)/.installed

# The browser e2e tests drive Debian's Chromium (Playwright's own download does not work here).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing Debian's chromium for the browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# promtool (Debian's prometheus package) unit-tests the shipped SLO alerting rules (monitoring/prometheus/).
promtool:
	@command -v promtool >/dev/null 2>&1 || { \
		echo "installing Debian's prometheus for promtool"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

# Two pytest-xdist workers, a file at a time each (a module's server stack stays with its tests): most of
# the suite waits on sockets, servers and browsers, so two workers on two cores nearly halve its time.
# Each worker has its own test database and channel prefix (tests/support/worker_env.py).
TEST_WORKERS ?= 2
# Then the `solo` tests, alone on the machine: they assert the seed's throughput figures, which a browser
# test in the other worker would take the cores from.
test: install browser promtool
	$(TEST_ENV) $(BIN)/python -m pytest -q -m "not chaos and not solo" -p tests.support.worker_env -n $(TEST_WORKERS) --dist loadfile
	$(TEST_ENV) $(BIN)/python -m pytest -q -m "solo and not chaos"

# The socket fuzz test at full length (3,000 hypothesis examples; `make test` runs 1,200). FUZZ_SEED=N replays.
.PHONY: fuzz
fuzz: install
	$(TEST_ENV) FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-3000} $(BIN)/python -m pytest -q tests/integration/test_websocket_fuzz_integration.py

# The short chaos run (tests/e2e/test_chaos_e2e.py, ~80 s, so not in `make test`): faults against the
# stack's own private redis-server, never the machine's Redis. CHAOS_SEED=N replays a fault plan. The
# full-length run: $(BIN)/python tests/benchmarks/chaos.py (see tests/benchmarks/README.md).
.PHONY: chaos
chaos: install
	$(TEST_ENV) $(BIN)/python -m pytest -q -m chaos tests/e2e/test_chaos_e2e.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy .
	$(BIN)/lint-imports

RUN_ENV := DATABASE_URL=$${DATABASE_URL:-postgres://postgres@$(PGHOST):5432/chat} \
	REDIS_URL=$${REDIS_URL:-redis://127.0.0.1:6379/0}
PORT ?= 8000

# The production layout on this machine: PostgreSQL, Redis, uvicorn and the agent worker.
run: install
	@psql -h $(PGHOST) -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='chat'" | grep -q 1 \
		|| createdb -h $(PGHOST) -U postgres chat
	$(RUN_ENV) $(BIN)/python manage.py migrate --noinput
	$(RUN_ENV) $(BIN)/python manage.py seed_demo
	@echo "Open http://127.0.0.1:$(PORT)/ and log in as alice / demo-password (admin: /admin/, admin / demo-password)"
	$(RUN_ENV) $(BIN)/python manage.py serve --port $(PORT)

# Laptop mode: no services needed (SQLite, in-memory channel layer, agents in-process).
run-embedded: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py seed_demo
	@echo "Open http://127.0.0.1:$(PORT)/ and log in as alice / demo-password"
	$(BIN)/python manage.py serve --port $(PORT)

# Mutation testing of the core, one module at a time (MODULES="chat/infra/rate_limiter.py ..." for a few):
# prints module | mutants | killed | survived | timeout | score and writes tests/benchmarks/results/mutation.json.
# Niced, one worker, its own test database and channel prefix: the machine and its services are shared.
mutation: install
	DB_POOL_MIN=0 TEST_DATABASE_NAME=test_chat_mut_$$$$ DATABASE_URL=postgres://postgres@$(PGHOST):5432/chat \
		REDIS_URL=redis://127.0.0.1:6379/0 CHANNEL_PREFIX=chatmut$$$$ \
		nice -n 19 $(BIN)/python tests/mutation/run_mutation.py $(MODULES)
