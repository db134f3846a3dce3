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
# `make run` only: the app secrets the webhooks role checks and the mocks sign with (the mocks
# play Meta for this app), so the whole production path runs locally. Never in supervisor.toml
# (it is also the Kubernetes ConfigMap); a real deployment sets them from a secret store.
WHATSAPP_APP_SECRET ?= dev-mock-app-secret
INSTAGRAM_APP_SECRET ?= dev-mock-app-secret
# `make run` only: the key that seals the accounts table's tokens and app secrets. A development
# key, like the secrets above; a real deployment mounts its own (ACCOUNTS_KEY_FILE; a new one:
# chat4all-workers accounts new-key).
ACCOUNTS_KEY ?= dev:942Xsz5BrXZ3RSNwLZoFlCZjuujzH9Z1QoTV/zzxZdo=
RUN_ENV = $(WITH_ENV) export ACCOUNTS_KEY='$(ACCOUNTS_KEY)' &&
# `make test` also needs Prometheus (tests/e2e/test_prometheus.py); `make run` does not.
TEST_SERVICES := kafka postgres redis s3 prometheus
# Tests that run a 3-node Kafka cluster of their own (marker `cluster`): in `make soak` and
# `make test-cluster`; in `make test` only the pipeline's broker failover (marker `failover`,
# tests/e2e/test_broker_failover.py: 65-110 s with its cluster here), not the cluster's own
# tests (tests/infra/test_kafka_cluster.py: three more JVMs for another minute).
TEST_MARKERS ?= not cluster or failover
TEST_WORKERS ?= 3
# `make soak`: the fault and hostile-input tests with bigger sizes, then a long pipeline load.
SOAK_SECONDS ?= 600
SOAK_RATE ?= 100
SOAK_EXAMPLES ?= 200
SOAK_FAULTS ?= FAULT_RATE_PER_S=50 FAULT_SECONDS=30 FAULT_CONVERSATIONS=16 FAULT_OUTAGE_S=10 \
	FAULT_TIMEOUT_S=600 HOSTILE_EXAMPLES=$(SOAK_EXAMPLES) OUTBOX_OUTAGE_S=75 \
	WEBHOOK_E2E_WEBHOOKS=50000 WEBHOOK_HOSTILE_EXAMPLES=2000 KILL_MESSAGES=5000 KILL_RATE_PER_S=5000 \
	KILL_CONVERSATIONS=500 \
	FAILOVER_RATE_PER_S=20 FAILOVER_SECONDS=60 FAILOVER_KILL_AFTER_S=20 FAILOVER_WORKERS=2 \
	FAILOVER_TIMEOUT_S=600

.PHONY: help venv tools stack test-stack migrate topics businesses run check test test-cluster lint down status soak

help:
	@echo "make venv     create .venv and install the package with its dev extras"
	@echo "make stack    start Kafka, PostgreSQL, Redis and S3 (scripts/devstack up)"
	@echo "make migrate  apply the database migrations"
	@echo "make topics   create the Kafka topics"
	@echo "make businesses  register a second business (Globex) in the accounts table"
	@echo "make run      everything above, then run all roles and the channel mocks"
	@echo "make check    lint and every test that needs no service (starts nothing; under a minute)"
	@echo "make test     venv + stack + Prometheus + lint, then the whole suite, 15 slowest listed"
	@echo "              (PYTEST_ARGS=... to pass options)"
	@echo "make test-cluster  the tests on a 3-node Kafka cluster of their own (DEVSTACK_KAFKA_BROKERS=3),"
	@echo "              the pipeline's broker failover included (also in make test)"
	@echo "make lint     ruff (check, format), mypy --strict (src, harness, tests, bench),"
	@echo "              import-linter"
	@echo "make soak     long run (tens of minutes): fault + hostile-input tests with bigger sizes,"
	@echo "              then bench/pipeline.py for SOAK_SECONDS=$(SOAK_SECONDS) at SOAK_RATE=$(SOAK_RATE)/s"
	@echo "make status   state of each service"
	@echo "make down     stop the services devstack started"

venv: $(STAMP)

# pip runs again only when pyproject.toml is newer than the stamp. It says what it installs: a
# fresh venv takes about a minute (the dev extras include Kubernetes' schemas and Locust).
$(STAMP): pyproject.toml
	@echo "make venv: $(VENV) with $$($(PYTHON) --version)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --progress-bar off --upgrade pip | sed '/^Requirement already/d'
	@echo "make venv: installing chat4all-workers in editable mode with its [dev] extras"
	$(BIN)/python -m pip install --progress-bar off -e '.[dev]' | sed '/^Requirement already/d'
	touch $(STAMP)
	@echo "make venv: done"

# Tools the service-free tests call: promtool (Debian's prometheus) and kubectl (kustomize).
# Installs what is missing (apt-get, as root), starts nothing.
tools:
	$(DEVSTACK) install prometheus
	@command -v kubectl >/dev/null || { echo "make tools: apt-get install kubectl"; \
		apt-get install -y -q --no-install-recommends kubectl </dev/null; }

stack: venv
	$(DEVSTACK) up

test-stack: venv
	$(DEVSTACK) up $(TEST_SERVICES)

migrate: venv stack
	$(WITH_ENV) $(BIN)/chat4all-workers db migrate

topics: venv stack
	$(WITH_ENV) $(BIN)/chat4all-workers topics ensure

# A second business, Globex, with its own Meta app, WhatsApp number and Instagram account, in the
# accounts table (the environment's account is the first, `default`); the mocks play its
# accounts (supervisor.toml mocks.accounts: the same tokens and app secret). Idempotent.
businesses: venv migrate
	@$(RUN_ENV) printf 'dev-globex-secret\ndev-globex-verify-token\n' \
		| $(BIN)/chat4all-workers accounts app-add globex-dev --update
	@$(RUN_ENV) echo dev-globex-token | $(BIN)/chat4all-workers accounts add whatsapp globex \
		--provider-id 109000000000002 --app globex-dev --update
	@$(RUN_ENV) echo dev-globex-ig-token | $(BIN)/chat4all-workers accounts add instagram globex \
		--provider-id 17841400000000002 --app globex-dev --update

run: venv stack migrate topics businesses
	$(RUN_ENV) WHATSAPP_APP_SECRET='$(WHATSAPP_APP_SECRET)' INSTAGRAM_APP_SECRET='$(INSTAGRAM_APP_SECRET)' \
		exec $(BIN)/chat4all-workers run --roles $(ROLES)

# Lint and the tests that need no service (a test using the stack fixture must carry the
# `stack` marker: tests/conftest.py refuses it otherwise). Starts nothing, reads no stack env.
check: venv tools lint
	env -u KAFKA_BOOTSTRAP_SERVERS -u DATABASE_URL -u REDIS_URL -u MINIO_ENDPOINT \
		$(BIN)/pytest -m "not stack" --durations=5 $(PYTEST_ARGS)

# The tools hold the line: lint first, then every test against the real stack, on TEST_WORKERS
# pytest-xdist workers (most of a stack test's time is waiting on a service, so three share two
# cores well). The `faults` tests stop and start services: they have a stack of their own
# (tests/e2e/faults/conftest.py) and run one at a time on one worker (`--dist loadgroup`, group
# `faults`) while the other workers share the rest. Prints the 15 slowest.
test: venv test-stack tools lint
	$(WITH_ENV) $(BIN)/pytest -m "$(TEST_MARKERS)" -n $(TEST_WORKERS) --dist loadgroup \
		--durations=15 $(PYTEST_ARGS)

# Each cluster test brings up a cluster of its own (CLUSTER_TEST_PORTS=LOW-HIGH picks its ports);
# the pipeline's failover test also needs the stack's PostgreSQL, Redis and S3.
test-cluster: venv stack
	$(WITH_ENV) $(BIN)/pytest -m cluster --durations=5 $(PYTEST_ARGS)

# Not part of `make test`: bigger sizes, so nothing else should load the machine meanwhile (the
# fault tests break a stack of their own, tests/e2e/faults/conftest.py). Sizes: SOAK_FAULTS (env
# for tests/e2e/faults/test_faults.py, test_hostile_input.py and the webhook tests),
# SOAK_EXAMPLES, SOAK_SECONDS, SOAK_RATE (keep it below what the pipeline sustains, see
# bench/pipeline.py: a growing backlog fails the drain, by design).
soak: venv stack
	$(WITH_ENV) $(SOAK_FAULTS) $(BIN)/pytest -p no:cacheprovider tests/e2e/faults/test_faults.py \
		tests/e2e/faults/test_outbox_outage.py tests/e2e/test_hostile_input.py \
		tests/e2e/test_webhook_statuses.py tests/e2e/test_webhook_hostile.py \
		tests/e2e/test_router_kills.py \
		tests/infra/test_kafka_cluster.py tests/e2e/test_broker_failover.py $(PYTEST_ARGS)
	$(WITH_ENV) $(BIN)/python bench/pipeline.py --rate $(SOAK_RATE) --seconds $(SOAK_SECONDS) \
		--drain-timeout 120

lint: venv
	$(BIN)/ruff check src tests bench harness
	$(BIN)/ruff format --check src tests bench harness
	$(BIN)/mypy
	$(BIN)/lint-imports

status:
	$(DEVSTACK) status

down:
	$(DEVSTACK) down
