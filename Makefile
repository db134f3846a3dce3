# Developer entry points. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEVSTACK := scripts/devstack
# Exports KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL, REDIS_URL, MINIO_* for the command after it.
WITH_ENV = eval "$$($(DEVSTACK) env)" &&
PYTEST_ARGS ?=
ROLES ?= all,whatsapp_mock,instagram_mock
# `make soak`: the fault and hostile-input tests with bigger sizes, then a long pipeline load.
SOAK_SECONDS ?= 600
SOAK_RATE ?= 100
SOAK_EXAMPLES ?= 200
SOAK_FAULTS ?= FAULT_RATE_PER_S=50 FAULT_SECONDS=30 FAULT_CONVERSATIONS=16 FAULT_OUTAGE_S=10 \
	FAULT_TIMEOUT_S=600 HOSTILE_EXAMPLES=$(SOAK_EXAMPLES) OUTBOX_OUTAGE_S=75

.PHONY: help venv stack migrate topics run test lint down status soak

help:
	@echo "make venv     create .venv and install the package with its dev extras"
	@echo "make stack    start Kafka, PostgreSQL, Redis and S3 (scripts/devstack up)"
	@echo "make migrate  apply the database migrations"
	@echo "make topics   create the Kafka topics"
	@echo "make run      everything above, then run all roles and the channel mocks"
	@echo "make test     venv + stack + lint, then the test suite (PYTEST_ARGS=... to pass options)"
	@echo "make lint     ruff (check, format), mypy --strict (src, tests, bench), import-linter"
	@echo "make soak     long run (tens of minutes): fault + hostile-input tests with bigger sizes,"
	@echo "              then bench/pipeline.py for SOAK_SECONDS=$(SOAK_SECONDS) at SOAK_RATE=$(SOAK_RATE)/s"
	@echo "make status   state of each service"
	@echo "make down     stop the services devstack started"

venv: $(STAMP)

# pip runs again only when pyproject.toml is newer than the stamp.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

stack: venv
	$(DEVSTACK) up

migrate: venv stack
	$(WITH_ENV) $(BIN)/chat4all-workers db migrate

topics: venv stack
	$(WITH_ENV) $(BIN)/chat4all-workers topics ensure

run: venv stack migrate topics
	$(WITH_ENV) exec $(BIN)/chat4all-workers run --roles $(ROLES)

# The tools hold the line: lint first, then every test against the real stack.
test: venv stack lint
	$(WITH_ENV) $(BIN)/pytest $(PYTEST_ARGS)

# Not part of `make test`: the fault tests stop and start the shared services, so nothing else
# may use the stack meanwhile. Sizes: SOAK_FAULTS (env for tests/e2e/test_faults.py and
# test_hostile_input.py), SOAK_EXAMPLES, SOAK_SECONDS, SOAK_RATE (keep it below what the pipeline
# sustains, see bench/pipeline.py: a growing backlog fails the drain, by design).
soak: venv stack
	$(WITH_ENV) $(SOAK_FAULTS) $(BIN)/pytest -p no:cacheprovider tests/e2e/test_faults.py \
		tests/e2e/test_outbox_outage.py tests/e2e/test_hostile_input.py $(PYTEST_ARGS)
	$(WITH_ENV) $(BIN)/python bench/pipeline.py --rate $(SOAK_RATE) --seconds $(SOAK_SECONDS) \
		--drain-timeout 120

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

status:
	$(DEVSTACK) status

down:
	$(DEVSTACK) down
