# Two commands do all set-up: `make demo` and `make test`. Both create or reuse .venv/.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.hant-trt-installed
PYTEST_ARGS ?= -q

.PHONY: demo test venv clean-venv check-gpu-image

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and alone, so pip takes the pinned builds and nothing drags in another one
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hant-trt demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)

# The tests and a CPU dry run of tools/validate_gpu.py under the lent GPU machine's versions
# (torch 2.11, timm 1.0.29, onnx 1.23.1, onnxruntime 1.30, Python 3.12), in a venv of their own:
# a GPU lease is minutes, and a version mismatch found there costs one. ~5 GB, ~20 min on 2 cores.
GPU_IMAGE_VENV   ?= .venv-gpu-image
GPU_IMAGE_PYTHON ?= python3.12
GPU_IMAGE_DATA   ?= ../shared/data/imagenet-sample
check-gpu-image:
	@test -x $(GPU_IMAGE_VENV)/bin/python || $(GPU_IMAGE_PYTHON) -m venv $(GPU_IMAGE_VENV)
	$(GPU_IMAGE_VENV)/bin/python -m pip install -q -r tools/gpu-image-requirements.txt
	$(GPU_IMAGE_VENV)/bin/python -m pip install -q --no-deps -e .
	$(GPU_IMAGE_VENV)/bin/python -m pytest $(PYTEST_ARGS)
	$(GPU_IMAGE_VENV)/bin/python tools/validate_gpu.py --data $(GPU_IMAGE_DATA) --device cpu --quick \
	    --skip-tests --workdir $${TMPDIR:-/tmp}/hant-trt-gpu-image
