# The project's entry points. README and .ci/run use these targets.
#   make demo   install the peers, build, run a user-namespaced container end to end
#   make test   install the peers, then every test: unit, and privileged integration tests
#               against real containerd 1.6 and 2.4.2 (with a standalone kubelet v1.35 next to
#               runc v1.5.3), the ctr, CRI and kubelet flows on containerd 2.0, 2.1, 2.2 and
#               2.3, and the kernel-dependent tests in VMs running Debian's 6.1, 6.12 and
#               newest kernels with pure cgroup v2 (needs root)
CARGO ?= cargo
TARGET_DIR := $(shell $(CARGO) metadata --format-version 1 --no-deps 2>/dev/null | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
SHIM_DEBUG := $(TARGET_DIR)/debug/containerd-shim-usernsrs-v2
SHIM_RELEASE := $(TARGET_DIR)/release/containerd-shim-usernsrs-v2

.PHONY: peers build build-debug demo test lint unit integration lines install

peers:
	bash hack/install-peers.sh

build:
	$(CARGO) build --release -p containerd-shim-usernsrs-v2

build-debug:
	$(CARGO) build -p containerd-shim-usernsrs-v2

demo: peers build
	USERNSRS_SHIM=$(SHIM_RELEASE) bash hack/demo.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

unit:
	$(CARGO) test --workspace --exclude usernsrs-integration

integration: peers build-debug
	USERNSRS_SHIM=$(SHIM_DEBUG) bash hack/no-leaks.sh $(CARGO) test -p usernsrs-integration -- --test-threads=1

# The ctr and CRI flows of integration/line-tests.txt on every other containerd 2.x line.
lines: peers build-debug
	USERNSRS_SHIM=$(SHIM_DEBUG) CARGO=$(CARGO) bash hack/no-leaks.sh bash hack/containerd-lines.sh

test: lint unit integration lines vm-test

# Puts the release binary where containerd looks for it (PATH).
install: build
	install -m 0755 $(SHIM_RELEASE) /usr/local/bin/containerd-shim-usernsrs-v2

# The integration tests of integration/vm-tests.txt inside QEMU guests running Debian's 6.1,
# 6.12 and trixie-backports kernels with pure cgroup v2 (needs root; about 10 minutes per kernel
# under TCG; USERNSRS_VM_KERNELS="6.12" picks kernels). Summary:
# ${USERNSRS_CACHE:-/var/cache/usernsrs}/vm/results/summary.txt.
.PHONY: vm-test
vm-test: peers build-debug
	USERNSRS_SHIM=$(SHIM_DEBUG) bash hack/no-leaks.sh bash hack/vm/run.sh

# Benchmarks against runc and crun on private containerd 1.6 and 2.4.2 (not a test; about 12
# minutes; needs root): docs/bench/results.json, PNG plots and docs/bench/README.md.
.PHONY: bench
bench:
	bash hack/bench/run.sh
