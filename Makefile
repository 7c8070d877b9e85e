# OpenMFA: `make run` starts the whole system; `make test` checks everything.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# `make run` needs only the runtime dependencies; the test tools (pytest, ruff, mypy,
# playwright, ...) are installed by `make install` / `make test` alone.
RUNTIME := $(VENV)/.installed-runtime
STAMP  := $(VENV)/.installed

.PHONY: run test install tools lint typecheck pytest bench clean deb

define make_venv
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { \
	  echo "error: cannot create a virtualenv; on Debian: apt-get install python3-venv" >&2; exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
endef

$(RUNTIME): pyproject.toml
	$(make_venv)
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

# The test extras include the runtime dependencies: a later `make run` installs nothing.
$(STAMP): pyproject.toml
	$(make_venv)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@ $(RUNTIME)

install: $(STAMP)

## run: venv, install (runtime only), migrate the database, serve on http://127.0.0.1:8080
run: $(RUNTIME)
	$(BIN)/openmfa db upgrade
	$(BIN)/openmfa run

## tools: the Debian tools the tests talk to (installed with apt-get when root)
tools:
	@bash .ci/install-tools

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) tools
	$(BIN)/pytest -n auto --dist loadfile --cov --cov-branch --cov-report=term:skip-covered

## test: ruff, mypy --strict and the whole pytest suite
test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python bench/totp_gateway.py
	$(BIN)/python bench/wakeup.py

## deb: the Debian package (build/deb/openmfa_*.deb), built from a copy of this tree and
## checked with lintian; needs debhelper, python3-venv and lintian (.ci/install-tools)
DEB_DIR := build/deb
deb:
	rm -rf $(DEB_DIR) && mkdir -p $(DEB_DIR)/src
	tar -cf - --exclude-vcs --exclude=./.venv --exclude=./build --exclude=./dist \
	  --exclude='*.egg-info' --exclude=__pycache__ --exclude='.*_cache' . | tar -xf - -C $(DEB_DIR)/src
	cd $(DEB_DIR)/src && dpkg-buildpackage --build=binary --no-sign
	lintian --fail-on error $(DEB_DIR)/openmfa_*.deb

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.*
