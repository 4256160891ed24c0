# The two commands: `make serve` (the whole stack on 127.0.0.1 against moto) and
# `make test` (every test). Both set up .venv from requirements/dev.txt on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8080
LOCAL_DIR ?= .local
AUTH ?= on
LOAD ?=
export PORT LOCAL_DIR AUTH LOAD
export PYTHONPATH := layers/core/python:.

.PHONY: serve upload test test-fast lint bench build validate clean

$(STAMP): requirements/dev.txt layers/core/requirements.txt layers/imaging/requirements.txt layers/inference/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements/dev.txt
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/python -m infra.local.serve

# `make upload DIR=folder-or.zip [UPLOAD_ARGS="--url ... --token ..."]`: the folder uploader,
# by default into the local stack (`make serve`) with its uploader token.
upload: $(STAMP)
	@test -n "$(DIR)" || { echo 'usage: make upload DIR=<folder or .zip> [UPLOAD_ARGS="--url URL ..."]'; exit 2; }
	$(BIN)/python -m infra.upload $(DIR) $(UPLOAD_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not e2e"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy layers/core/python/dicomweb_core functions infra

bench: $(STAMP)
	$(BIN)/python -m infra.bench

validate: $(STAMP)
	$(BIN)/cfn-lint template.yaml
	SAM_CLI_TELEMETRY=0 $(BIN)/sam validate --lint --template template.yaml --region us-east-1

build: $(STAMP)
	SAM_CLI_TELEMETRY=0 $(BIN)/sam build --template template.yaml

clean:
	rm -rf $(VENV) .aws-sam .pytest_cache .mypy_cache .ruff_cache
