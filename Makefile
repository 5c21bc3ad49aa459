# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
NOTORCH ?= .venv-notorch
TFVENV ?= .venv-tf
PY := $(VENV)/bin/python
OUT ?= demo_out
LITE0 := build/lite0
JOBS ?= 2

.PHONY: demo test test-torch test-notorch docs js-deps venv-tf converter-corpus lint bench \
	validation-table clean

# Full environment: runtime + PyTorch front end + demo + test tools.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[torch,dev,demo]'
	# Quantus 0.6 (a reference for the evaluation metrics) without its opencv-python
	# requirement, which would share the cv2 folder with the headless build installed above
	$(PY) -m pip install -q pandas scikit-learn scipy matplotlib cachetools tqdm
	$(PY) -m pip install -q --no-deps quantus==0.6.0
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

# TensorFlow environment for the tf2onnx entries of the converter corpus (TensorFlow and torch
# do not share an environment). If it cannot be built the build goes on and those entries skip.
$(TFVENV)/.installed:
	( $(PYTHON) -m venv $(TFVENV) && \
	  $(TFVENV)/bin/python -m pip install -q tensorflow-cpu==2.21.0 tf2onnx==1.17.0 onnxruntime numpy && \
	  touch $@ ) || ( rm -rf $(TFVENV); echo "warning: could not build $(TFVENV); the tf2onnx corpus entries will skip" )

venv-tf: $(TFVENV)/.installed

# The converter corpus (build/converters): tf2onnx, torch.onnx, onnxslim, fp16, int8 QDQ files
# with the source framework's Grad-CAM. `make converter-corpus FULL=1` adds the slowest exports.
converter-corpus: $(VENV)/.installed venv-tf
	$(PY) tests/converter_corpus.py build/converters $(if $(FULL),--full)

demo: $(VENV)/.installed
	$(PY) examples/demo.py --out $(OUT)
	@echo "figures written to $(abspath $(OUT))"

test: test-torch test-notorch docs

# The documentation site (mkdocs.yml, docs/): a strict build fails on broken links and
# unresolved cross-references.
docs: $(VENV)/.installed
	$(PY) -m mkdocs build --strict --site-dir build/site

# JOBS pytest-xdist workers; tests/conftest.py groups the tests (a file's module fixtures
# are built once, on one worker).
test-torch: $(VENV)/.installed js-deps venv-tf
	$(PY) -m pytest -q -p no:cacheprovider -n $(JOBS) --dist loadgroup --durations=25

# The same suite where torch is not installed: torch tests skip, the rest (ONNX export, CLI,
# self-check, the pretrained EfficientNet-Lite0 exported beforehand) must pass. pytest runs
# from its script, not `python -m`, so `explainer` comes from the installed package.
test-notorch: $(VENV)/.installed $(NOTORCH)/.installed js-deps
	$(PY) tests/make_lite0_onnx.py $(LITE0)
	$(NOTORCH)/bin/python -m pip install -q --no-deps --force-reinstall .
	! $(NOTORCH)/bin/python -c "import torch" 2>/dev/null
	ONNXCAM_LITE0_DIR=$(LITE0) ONNXCAM_REQUIRE_INSTALLED=1 $(NOTORCH)/bin/pytest -q -p no:cacheprovider --durations=25

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check explainer exporters tests benchmarks examples

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_gradcam.py --json benchmarks/results.json

validation-table: $(VENV)/.installed
	rm -f build/validation.json
	ONNXCAM_VALIDATION_REPORT=build/validation.json $(PY) -m pytest -q -p no:cacheprovider \
		tests/validation/test_validation_matrix.py
	$(PY) benchmarks/validation_table.py build/validation.json

clean:
	rm -rf $(VENV) $(NOTORCH) $(TFVENV) $(OUT) build *.egg-info
