# prguard: `make demo` and `make test` do their own set-up on a fresh Debian 12 (as root).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Tools installed into the venv (virtme-ng's vng runs virtme-run through PATH) are found
# without activating it, from any shell, make's own included.
export PATH := $(abspath $(BIN)):$(PATH)
# gcc, libcap-dev, python3-dev: build python-prctl. qemu-system-common: the reference helper the
# differential tests compare against. fdisk, util-linux: partitioned loop devices.
# linux-image-amd64, qemu-system-x86, kmod: the lab's SCSI target in a VM (virtme-ng);
# sg3-utils, busybox-static: the nested guest that runs QEMU against prguard in the lab.
DEBS := gcc libcap-dev python3-dev python3-venv libseccomp2 qemu-system-common fdisk util-linux procps strace \
        linux-image-amd64 qemu-system-x86 kmod sg3-utils busybox-static
FUZZ_SECONDS ?= 60
SOAK_SECONDS ?= 120

.PHONY: all deps venv lint typecheck pytest fuzz-short fuzz soak test run demo clean bench

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

pytest: venv
	$(BIN)/pytest -q

# Each fuzzer for FUZZ_SECONDS; a crash is saved under fuzz/regressions/ and fails.
fuzz-short: venv
	@for target in qemu_protocol messages; do \
	  corpus=$$(mktemp -d); \
	  echo "fuzzing $$target for $(FUZZ_SECONDS) s"; \
	  $(BIN)/python fuzz/fuzz_$$target.py -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	    -artifact_prefix=fuzz/regressions/$${target%_protocol}- $$corpus fuzz/corpus/$${target%_protocol} \
	    2>&1 | grep -E '^(stat::number_of_executed_units|==[0-9]+==|=== Uncaught)' ; \
	  status=$${PIPESTATUS[0]}; rm -rf $$corpus; [ $$status -eq 0 ] || exit $$status; \
	done

fuzz: FUZZ_SECONDS = 600
fuzz: fuzz-short

# 50 clients, mixed valid and hostile traffic, against one prguard for SOAK_SECONDS.
soak: venv
	@disk=$$(mktemp /tmp/prguard-soak.XXXXXX); truncate -s 16M $$disk; \
	dev=$$(losetup -f --show $$disk); sock=$$(mktemp -u /tmp/prguard-soak.XXXXXX.sock); \
	$(BIN)/prguard -k $$sock --max-connections-per-peer=100 2>/dev/null & pid=$$!; \
	while [ ! -S $$sock ]; do sleep 0.05; done; sleep 0.5; \
	$(BIN)/python -m lab.soak $$sock $$dev $(SOAK_SECONDS) 50 $$pid; status=$$?; \
	kill $$pid; wait $$pid; losetup -d $$dev; rm -f $$disk; exit $$status

test: lint typecheck pytest fuzz-short

# prguard vs qemu-pr-helper vs a raw SG_IO ioctl, host and lab guest (bench/README.md).
# BENCH_ARGS: e.g. --no-lab, --rounds 5, --duration 3.
bench: venv
	$(BIN)/python -m bench $(BENCH_ARGS)

# The fence_scsi story through prguard-client, in the lab VM (lab/): about 1-2 minutes.
demo: venv
	$(BIN)/python -m demo.run

# The helper in the foreground on the default socket, logging each request.
run: venv
	$(BIN)/prguard -v

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
