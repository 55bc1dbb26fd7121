# prguard: `make demo` and `make test` do their own set-up on a fresh Debian 12 (as root).
# `make install` (PREFIX, DESTDIR) builds and installs prguard for administrators and
# packagers; it needs gcc, libcap-dev, python3-dev and python3-venv.

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
# multipath-tools: mpathpersist, the reference for PR on a dm-multipath map in the lab.
# man-db (and its groff): the man pages are checked as man shows them.
DEBS := gcc libcap-dev python3-dev python3-venv libseccomp2 qemu-system-common fdisk util-linux procps strace \
        linux-image-amd64 qemu-system-x86 kmod sg3-utils busybox-static man-db multipath-tools
FUZZ_SECONDS ?= 60
SOAK_SECONDS ?= 120

.PHONY: all deps venv lint typecheck pytest fuzz-short fuzz soak test run demo clean bench \
        build install uninstall man mutate

all: build

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

# One-line bugs put into a copy of the tree, each to be caught by the tests named for it
# (lab/mutations.toml, docs/TESTING.md): all of them; make test runs the fast ones
# (tests/test_mutations.py). MUTATE_ARGS: e.g. --slow, --keep, or mutation names.
mutate: venv
	$(BIN)/python -m lab.mutate $(MUTATE_ARGS)

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

# The man pages for a look: man -l build/man/prguard.8
man: venv
	$(BIN)/python -m prguard.man build/man

# -- install ------------------------------------------------------------------------------
# prguard in its own virtual environment under LIBDIR, `prguard`, `prguard-client` and
# `prguard-audit` in BINDIR, the systemd units (ExecStart= in BINDIR), the prguard user
# for systemd-sysusers, its metrics directory for systemd-tmpfiles, and the man pages.
# DESTDIR stages all of it for a package: a virtual environment cannot be moved, so every
# path written there (scripts' #! lines, pyvenv.cfg, the compiled modules' file names) is
# the final one. Not under /root, /home or /tmp: the unit's
# ProtectHome= and PrivateTmp= hide those from the service.
PREFIX = /usr/local
BINDIR = $(PREFIX)/bin
LIBDIR = $(PREFIX)/lib/prguard
MANDIR = $(PREFIX)/share/man
UNITDIR = $(PREFIX)/lib/systemd/system
SYSUSERSDIR = $(PREFIX)/lib/sysusers.d
TMPFILESDIR = $(PREFIX)/lib/tmpfiles.d
# The interpreter the installed environment runs on: the system's, which the service can
# see (a pyenv or a venv under /root would be hidden from it).
INSTALL_PYTHON = /usr/bin/python3
STAGE = $(abspath $(DESTDIR)$(LIBDIR))
WHEELS := build/wheels
PACKAGE_SOURCES := pyproject.toml README.md LICENSE \
        $(wildcard prguard/*.py broker/*.py worker/*.py shared/*.py client/*.py audit/*.py \
                   man/*.py seccomp/*.py seccomp/*.policy)

# Wheels of prguard and of its dependencies (python-prctl is compiled here), so that the
# install itself needs neither a network nor a compiler.
build: $(WHEELS)/.built

build/venv/bin/pip:
	$(INSTALL_PYTHON) -m venv build/venv

$(WHEELS)/.built: $(PACKAGE_SOURCES) | build/venv/bin/pip
	rm -rf $(WHEELS) build/lib  # setuptools would put a module removed since into the wheel
	build/venv/bin/pip wheel -q --wheel-dir $(WHEELS) .
	@touch $@

# LIBDIR is removed whole by install and uninstall: it must be prguard's own.
CHECK_LIBDIR = case "$(LIBDIR)" in */prguard) ;; \
  *) echo "LIBDIR=$(LIBDIR): must end in /prguard (it is removed whole)" >&2; exit 1;; esac

install: build
	@$(CHECK_LIBDIR)
	@for path in "$$(realpath $(INSTALL_PYTHON))" "$(LIBDIR)"; do case "$$path/" in \
	  /root/*|/home/*|/tmp/*) echo "$$path is under /root, /home or /tmp, which the" \
	    "service cannot see (ProtectHome=, PrivateTmp=)" >&2; exit 1;; esac; done
	rm -rf $(STAGE)
	$(INSTALL_PYTHON) -m venv --without-pip $(STAGE)
	build/venv/bin/pip --python $(STAGE)/bin/python install -q --no-index \
	  --find-links $(WHEELS) --no-compile --no-warn-script-location prguard
	@if [ -n "$(DESTDIR)" ]; then \
	  grep -rlIF -- '$(STAGE)' $(STAGE) | xargs -r sed -i 's|$(STAGE)|$(LIBDIR)|g'; fi
	$(STAGE)/bin/python -m compileall -q -j 0 -d $(LIBDIR)/lib $(STAGE)/lib
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) \
	  $(DESTDIR)$(TMPFILESDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man8
	ln -sfr $(STAGE)/bin/prguard $(DESTDIR)$(BINDIR)/prguard
	ln -sfr $(STAGE)/bin/prguard-client $(DESTDIR)$(BINDIR)/prguard-client
	ln -sfr $(STAGE)/bin/prguard-audit $(DESTDIR)$(BINDIR)/prguard-audit
	sed 's|^ExecStart=/usr/local/bin/prguard |ExecStart=$(BINDIR)/prguard |' \
	  systemd/prguard.service > build/prguard.service
	grep -q '^ExecStart=$(BINDIR)/prguard ' build/prguard.service
	install -m 644 build/prguard.service systemd/prguard.socket $(DESTDIR)$(UNITDIR)/
	printf '%s\n' '# The user both prguard processes run as (prguard.service: -u prguard -g prguard).' \
	  'u prguard - "prguard persistent reservation helper"' > build/prguard.sysusers
	install -m 644 build/prguard.sysusers $(DESTDIR)$(SYSUSERSDIR)/prguard.conf
	install -m 644 systemd/prguard.tmpfiles $(DESTDIR)$(TMPFILESDIR)/prguard.conf
	$(STAGE)/bin/python -P -m prguard.man --bindir=$(BINDIR) --libdir=$(LIBDIR) \
	  --unitdir=$(UNITDIR) --sysusersdir=$(SYSUSERSDIR) --tmpfilesdir=$(TMPFILESDIR) build/man
	install -m 644 build/man/prguard-client.1 build/man/prguard-audit.1 $(DESTDIR)$(MANDIR)/man1/
	install -m 644 build/man/prguard.8 $(DESTDIR)$(MANDIR)/man8/

uninstall:
	@$(CHECK_LIBDIR)
	rm -rf $(DESTDIR)$(LIBDIR)
	rm -f $(DESTDIR)$(BINDIR)/prguard $(DESTDIR)$(BINDIR)/prguard-client \
	  $(DESTDIR)$(BINDIR)/prguard-audit $(DESTDIR)$(MANDIR)/man1/prguard-audit.1 \
	  $(DESTDIR)$(UNITDIR)/prguard.socket $(DESTDIR)$(UNITDIR)/prguard.service \
	  $(DESTDIR)$(SYSUSERSDIR)/prguard.conf $(DESTDIR)$(TMPFILESDIR)/prguard.conf \
	  $(DESTDIR)$(MANDIR)/man1/prguard-client.1 $(DESTDIR)$(MANDIR)/man8/prguard.8
