# Quick start: `make demo` runs the product on local services; `make test` runs the whole suite.
# Both start the local services first (scripts/services up: Postgres 15, Redis 7, Qdrant stand-in).

SHELL := /bin/bash
SWIFT_BUILD_FLAGS ?=
BIN := .build/debug
SERVICES_ENV := eval "$$(scripts/services env)"

.PHONY: demo test build services-up services-down unit-test

build:
	swift build $(SWIFT_BUILD_FLAGS)

services-up:
	scripts/services up

services-down:
	scripts/services down

## demo: start services, migrate, run the relay and a writer, show what landed in each store.
demo: services-up build
	scripts/demo

## test: start services, then unit + integration tests (Swift) and the stand-in's own tests (pytest).
test: services-up
	swift build --build-tests $(SWIFT_BUILD_FLAGS)
	$(SERVICES_ENV) && "$$OUTBOX_VENV/bin/python" -m pytest -q -p no:cacheprovider scripts/qdrant-standin
	$(SERVICES_ENV) && swift test --skip-build $(SWIFT_BUILD_FLAGS)

## unit-test: the tests that need no server.
unit-test:
	swift test --skip IntegrationTests $(SWIFT_BUILD_FLAGS)
