# One command each: `make demo` (install + train/scan/report on sample_data) and `make test` (install + tests).
# Both create .venv on first use and install only what is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# onnxruntime-gpu where an NVIDIA driver is present, onnxruntime otherwise (never both: same module name).
ORT_EXTRA := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)
STAMP := $(VENV)/.installed-$(ORT_EXTRA)

.PHONY: install demo test test-fast browser clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(ORT_EXTRA),dev]'
	touch $(STAMP)

# Headless Chromium for the HTML-report browser test (Debian/Ubuntu; skipped quietly elsewhere).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	    echo "note: chromium not installed; the browser test will be skipped"; }

demo: install
	$(VENV)/bin/icsscan train sample_data/good --out demo-out/model --seed 0 --force
	$(VENV)/bin/icsscan scan sample_data/incoming --model demo-out/model --out demo-out/report --false-alarm-rate 0.05 --format csv,json,junit --force
	$(PY) tools/demo_auc.py demo-out/report/scores.csv sample_data/labels.csv

# Two test processes (pytest-xdist), each test file in one of them so module-scoped fixtures (the Ray cluster) are
# built once, the longest files first (their order: tests/conftest.py, which also sets one compute thread per
# process). `make test TEST_WORKERS=0`: one process.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

test: install browser
	$(PYTEST)

# Unit tests and one end-to-end run (train + scan on sample_data): under 2 minutes; `make test` runs everything.
test-fast: install
	$(PYTEST) -m "not slow"

clean:
	rm -rf demo-out icsscan-model icsscan-report .pytest_cache
