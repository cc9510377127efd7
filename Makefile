# raftctl: the two quick-start commands are `make up` and `make test`.
# Both install everything they need (a virtualenv with the Python dependencies and,
# when run as root on Debian/Ubuntu, runc, tini, busybox-static, btrfs-progs and nftables).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DIR ?= .raftctl-dev

.PHONY: deps system-deps up lint test test-fast bench bench-deps jepsen clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

deps: system-deps $(STAMP)

# The two Debian-package targets below share this frame: as root where apt-get exists, collect what is
# missing into $missing (the lines between APT_MISSING and APT_INSTALL), install it in one apt-get; otherwise
# say what will not run. apt-get waits up to 5 min for another apt's lock (a machine's own boot-time
# apt, or `make up` and `make test` started together) instead of failing at once.
APT_MISSING = if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then missing="";
APT_INSTALL = if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq $$missing >/dev/null; \
	  fi; \
	else echo "not root or no apt-get:"

# Debian packages for the runc driver (runc, and tini as each container's PID 1), images on btrfs,
# the jepsen-style harness, the dashboard's browser test and systemd-analyze (deploy/systemd unit check).
# Only as root, only where apt-get exists; otherwise the runc tests skip loudly.
system-deps:
	@$(APT_MISSING) \
	  command -v runc >/dev/null 2>&1 || missing="$$missing runc"; \
	  [ -x /bin/busybox ] || missing="$$missing busybox-static"; \
	  command -v tini-static >/dev/null 2>&1 || missing="$$missing tini"; \
	  command -v mkfs.btrfs >/dev/null 2>&1 || missing="$$missing btrfs-progs"; \
	  command -v nft >/dev/null 2>&1 || missing="$$missing nftables"; \
	  command -v ip >/dev/null 2>&1 || missing="$$missing iproute2"; \
	  command -v faketime >/dev/null 2>&1 || missing="$$missing faketime"; \
	  command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd"; \
	  [ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	$(APT_INSTALL) "runc/btrfs/nftables not installed; those tests will skip"; fi

up: deps
	$(BIN)/raftctl up --dir $(DIR)

# lint (ruff: pyflakes, pycodestyle errors, bugbear) and types (mypy; strict on statemachine/ and scheduler/),
# configured in pyproject.toml; then the suite
lint: deps
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

# What the benchmarks compare against: etcd 3.4 (bench/raft_commit.py) and wrk, the C load generator
# (raft_commit.py, discovery.py). Only as root, only where apt-get exists; otherwise those parts print n/a.
bench-deps:
	@$(APT_MISSING) \
	  command -v wrk >/dev/null 2>&1 || missing="$$missing wrk"; \
	  command -v etcd >/dev/null 2>&1 || missing="$$missing etcd-server"; \
	$(APT_INSTALL) "wrk/etcd not installed; the benches print n/a for those parts"; fi

bench: deps bench-deps
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

jepsen: deps
	$(BIN)/python jepsen-style/run.py --seeds 10 --duration 600

clean:
	rm -rf $(VENV) $(DIR)
