# prguard: `make test` and `make run` do their own set-up on a fresh Debian 12 (as root).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Build needs for python-prctl (libcap-dev, gcc), the reference helper for the
# differential tests (qemu-system-common), loop-device partitions (fdisk, util-linux).
DEBS := gcc libcap-dev libseccomp2 qemu-system-common fdisk util-linux procps

.PHONY: all deps venv lint typecheck test run clean

all: test

deps:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(BIN)/prguard: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

venv: deps $(BIN)/prguard

lint: venv
	$(BIN)/ruff check .

typecheck: venv
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest -q

# The helper in the foreground on the default socket, logging each request.
run: venv
	$(BIN)/prguard -v

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
