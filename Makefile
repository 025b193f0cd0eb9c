# Quick start: `make demo` runs the product on local services; `make test` runs the whole suite.
# Both start the local services first (scripts/services up: Postgres 15, Redis 7, Qdrant stand-in);
# `make test` also starts the Redis Cluster the cluster tests need (scripts/services up redis-cluster).

SHELL := /bin/bash
SWIFT_BUILD_FLAGS ?=
BIN := .build/debug
SERVICES_ENV := eval "$$(scripts/services env)"

.PHONY: demo test build services-up services-down unit-test chaos chaos-cluster

build:
	swift build $(SWIFT_BUILD_FLAGS)

services-up:
	scripts/services up

services-down:
	scripts/services down

## demo: start services, migrate, run the relay and a writer, show what landed in each store, end with a search.
demo: services-up build
	scripts/demo

## test: start services (the Redis Cluster too), then unit + integration tests (Swift) and the stand-in's and chaos driver's own tests (pytest).
test: services-up
	scripts/services up redis-cluster
	swift build --build-tests $(SWIFT_BUILD_FLAGS)
	$(SERVICES_ENV) && "$$OUTBOX_VENV/bin/python" -m pytest -q -p no:cacheprovider scripts/qdrant-standin scripts/test_chaos.py
	$(SERVICES_ENV) && swift test --skip-build $(SWIFT_BUILD_FLAGS)

## unit-test: the tests that need no server.
unit-test:
	swift test --skip IntegrationTests $(SWIFT_BUILD_FLAGS)

## chaos: the short chaos soak (scripts/chaos --help); it runs on its own instance of the services.
chaos:
	scripts/chaos --short

## chaos-cluster: the short chaos soak with a Redis Cluster (of its own) as the Redis destination.
chaos-cluster:
	scripts/chaos --short --cluster
