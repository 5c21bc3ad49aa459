# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
NOTORCH ?= .venv-notorch
PY := $(VENV)/bin/python
OUT ?= demo_out
LITE0 := build/lite0

.PHONY: demo test test-torch test-notorch js-deps lint bench validation-table clean

# Full environment: runtime + PyTorch front end + demo + test tools.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[torch,dev,demo]'
	touch $@

# Torch-free environment: `pip install .` with no extras (plus the test runner and onnx-ad).
$(NOTORCH)/.installed: pyproject.toml
	$(PYTHON) -m venv $(NOTORCH)
	$(NOTORCH)/bin/python -m pip install -q . pytest onnx-ad==0.3.0 playwright hypothesis
	touch $@

# What the binding tests need: onnxruntime-node and onnxruntime-web (their install scripts fetch
# CUDA binaries from an unreachable host; the CPU/WebAssembly builds ship in the packages) and
# a headless Chromium (Debian's package, installed when missing and running as root).
examples/node/node_modules/.installed: examples/node/package.json
	cd examples/node && npm install --ignore-scripts --no-audit --no-fund
	touch $@

examples/web/node_modules/.installed: examples/web/package.json
	cd examples/web && npm install --ignore-scripts --no-audit --no-fund
	touch $@

js-deps: examples/node/node_modules/.installed examples/web/node_modules/.installed
	@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || \
		(apt-get update -q && apt-get install -y -q chromium) || \
		echo "chromium could not be installed: the browser tests will skip"

demo: $(VENV)/.installed
	$(PY) examples/demo.py --out $(OUT)
	@echo "figures written to $(abspath $(OUT))"

test: test-torch test-notorch

test-torch: $(VENV)/.installed js-deps
	$(PY) -m pytest -q -p no:cacheprovider

# The same suite where torch is not installed: torch tests skip, the rest (ONNX export, CLI,
# self-check, the pretrained EfficientNet-Lite0 exported beforehand) must pass. pytest runs
# from its script, not `python -m`, so `explainer` comes from the installed package.
test-notorch: $(VENV)/.installed $(NOTORCH)/.installed js-deps
	$(PY) tests/make_lite0_onnx.py $(LITE0)
	$(NOTORCH)/bin/python -m pip install -q --no-deps --force-reinstall .
	! $(NOTORCH)/bin/python -c "import torch" 2>/dev/null
	ONNXCAM_LITE0_DIR=$(LITE0) ONNXCAM_REQUIRE_INSTALLED=1 $(NOTORCH)/bin/pytest -q -p no:cacheprovider

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check explainer exporters tests benchmarks examples

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_gradcam.py --json benchmarks/results.json

validation-table: $(VENV)/.installed
	rm -f build/validation.json
	ONNXCAM_VALIDATION_REPORT=build/validation.json $(PY) -m pytest -q -p no:cacheprovider \
		tests/test_validation_matrix.py
	$(PY) benchmarks/validation_table.py build/validation.json

clean:
	rm -rf $(VENV) $(NOTORCH) $(OUT) build *.egg-info
