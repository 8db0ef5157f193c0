# ferry: every target wraps a deno task. When `deno` is not on PATH, Deno
# 2.9.6 is installed from npm into .tools/ first, so a fresh machine needs only
# `make run` or `make test`.
DENO_VERSION := 2.9.6
export DENO_NO_UPDATE_CHECK := 1
LOCAL_DENO := $(CURDIR)/.tools/node_modules/.bin/deno
DENO := $(or $(shell command -v deno 2>/dev/null),$(LOCAL_DENO))

.PHONY: run test check bench build clean deno

# make run ARGS="--listen 0.0.0.0:1080 --user alice:secret"
# Quiet: make echoing the recipe, or deno task its command line (to stderr,
# where the logs go), would write a --user password into whatever keeps them.
run: $(DENO)
	@$(DENO) task --quiet start socks $(ARGS)

test: $(DENO)
	@sh tests/check_tools.sh
	$(DENO) task check
	$(DENO) task test

check: $(DENO)
	$(DENO) task check

bench: $(DENO)
	$(DENO) task bench

# Offline, deno compile fails to download its runtime (denort) with an error
# that does not say what to do about it: say it.
build: $(DENO)
	$(DENO) task build || { \
	  echo "make build: failed. If deno compile could not download Deno's runtime (denort) from dl.deno.land, give it one of Deno $(DENO_VERSION): DENORT_BIN=/path/to/denort make build" >&2; \
	  rmdir dist 2>/dev/null; exit 1; }

deno: $(DENO)
	@$(DENO) --version

$(LOCAL_DENO):
	@command -v npm >/dev/null || { echo "make: need npm (Node.js) to install Deno $(DENO_VERSION)" >&2; exit 1; }
	npm install --no-save --no-audit --no-fund --prefix $(CURDIR)/.tools deno@$(DENO_VERSION)
	@test -x $@ || { echo "make: npm did not install a deno binary at $@" >&2; exit 1; }

clean:
	rm -rf dist .tools
