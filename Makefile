# bevlabels: `make help` lists the targets. Every target depends on `setup`, which is idempotent.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The local CPU wheel; override for a GPU box, e.g. `make setup TORCH="torch==2.11.0"`.
DEFAULT_TORCH := torch==2.13.0
TORCH  ?= $(DEFAULT_TORCH)
ARGS   ?=
STAMP  := $(VENV)/.setup-stamp
# The stamp records the TORCH it was made with (one from before it did: the default). Another TORCH remakes it, so
# `make setup TORCH=...` installs that torch even in a set-up checkout.
STAMP_TORCH := $(if $(wildcard $(STAMP)),$(or $(shell cat $(STAMP)),$(DEFAULT_TORCH)))
ifneq ($(STAMP_TORCH),)
ifneq ($(STAMP_TORCH),$(TORCH))
.PHONY: $(STAMP)
endif
endif

.PHONY: help setup test test-all lint format labels leak bench-visibility inspect train evaluate teacher teacher-train teacher-eval \
	teacher-cache synth bench bench-labels bench-teacher view clean

help: ## Show this help
	@echo "bevlabels: make targets (pass Hydra overrides with ARGS=\"key=value ...\")"
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

setup: $(STAMP) ## Create .venv, install torch first (TORCH=...), then bevlabels (editable, dev and viz extras); idempotent

$(STAMP): pyproject.toml
	@bash scripts/ensure_libusb.sh
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,viz]"   # viz: rerun-sdk==0.23.1, the scene viewer (make view)
	@printf '%s\n' "$(TORCH)" > $(STAMP)
	@echo "setup done: $(VENV) ($$($(PY) -c 'import torch; print("torch", torch.__version__)'))"

# The suite runs in TEST_WORKERS pytest-xdist processes (0: in this process). A file's tests stay in one worker
# (--dist loadfile), so module fixtures are built once; a worker that crashes fails its test, not the suite.
TEST_WORKERS ?= 2
test: setup ## Run the test suite in TEST_WORKERS processes (2; excludes `slow` and `gpu` markers)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(ARGS)

# The whole chain on whatever device is there (scripts/smoke.py): a tiny world, its labels, a few steps of bevdepth_dino,
# dvd_temporal and the teacher at the device's precision, DDP on every GPU (2 gloo processes on a CPU), evaluate, track.
# Under 10 minutes on 2 CPU cores; not part of `make test` (CI runs it after). ARGS="--device cpu --keep --out DIR".
.PHONY: smoke
smoke: setup ## The whole chain in minutes on the device there is (labels, 3 trainings, DDP, evaluate, track); a table
	$(PY) scripts/smoke.py $(ARGS)

test-all: setup ## Run every test, slow ones included
	$(PY) -m pytest -q -m "" $(ARGS)

lint: setup ## Ruff lint and format check
	$(VENV)/bin/ruff check bevlabels pipelines trainer scripts tests
	$(VENV)/bin/ruff format --check bevlabels pipelines trainer scripts tests

format: setup ## Apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix bevlabels pipelines trainer scripts tests
	$(VENV)/bin/ruff format bevlabels pipelines trainer scripts tests

labels: setup ## Label stage: DINOv2 BEV grids + projected LiDAR into zarr (default: the small synthetic world)
	$(PY) -m pipelines.labels $(ARGS)

inspect: setup ## PNG of one keyframe of a label store (ARGS="store=... sample=0")
	$(PY) scripts/inspect_labels.py $(ARGS)

view: setup ## A scene over time as a rerun recording (ARGS="scene=... [ckpt=|detections=...] [tracks=...] [out=f.rrd]"); rerun f.rrd
	$(PY) -m trainer.view $(ARGS)

train: setup ## Train a detector (Hydra: ARGS="experiment=teacher_centerpoint ..."; `python -m trainer.train --help`)
	$(PY) -m trainer.train $(ARGS)

evaluate: setup ## Score a checkpoint with the nuScenes devkit (ARGS="ckpt=.../last.ckpt [split=val] [out=...]")
	$(PY) -m trainer.evaluate $(ARGS)

# The LiDAR teacher (issue 5). `make teacher` goes from nothing to cached teacher maps on the synthetic
# world; each step is also a target of its own. TEACHER_TRAIN sets the training length (short by default).
TEACHER_EXPERIMENT ?= teacher_centerpoint_cpu
TEACHER_TRAIN      ?= trainer.max_epochs=2
TEACHER_RUN        ?= outputs/$(TEACHER_EXPERIMENT)/make-teacher
TEACHER_CKPT       ?= $(TEACHER_RUN)/checkpoints/last.ckpt
TEACHER_STORE      ?= data/labels/synthetic.zarr

teacher-train: setup ## Train the LiDAR teacher (CenterPoint) into TEACHER_RUN (ARGS="dataset=... trainer.max_epochs=20")
	$(PY) -m trainer.train experiment=$(TEACHER_EXPERIMENT) hydra.run.dir=$(TEACHER_RUN) $(TEACHER_TRAIN) $(ARGS)

teacher-eval: setup ## Evaluate the teacher checkpoint TEACHER_CKPT with the nuScenes devkit (summary next to it)
	$(PY) -m trainer.evaluate ckpt=$(TEACHER_CKPT) $(ARGS)

teacher-cache: setup ## Cache the teacher's BEV maps (teacher/bev) of TEACHER_CKPT into TEACHER_STORE
	$(PY) -m pipelines.teacher ckpt=$(TEACHER_CKPT) store=$(TEACHER_STORE) $(ARGS)

teacher: setup ## synth -> label store -> teacher training (short; TEACHER_TRAIN=...) -> evaluation -> teacher/bev cache
	$(PY) -m pipelines.labels out=$(TEACHER_STORE)
	@if [ -f "$(TEACHER_CKPT)" ]; then echo "make teacher: $(TEACHER_CKPT) exists, not retraining (delete it or run make teacher-train)"; \
	  else $(MAKE) --no-print-directory teacher-train; fi
	$(MAKE) --no-print-directory teacher-eval ARGS=
	$(MAKE) --no-print-directory teacher-cache ARGS=

# The teacher benchmark: BENCH_STEPS optimiser steps on the small synthetic world with CenterPoint's one-cycle
# schedule (a step count lets the schedule finish; 1400 steps of batch 4 took 57 min on 2 CPU cores, results/bench_tig_cpu.md), BENCH_TIME
# as a hard wall-time guard, validation loss every 5 epochs; then the devkit evaluation.
BENCH_STEPS ?= 1400
BENCH_TIME  ?= 00:01:00:00
ifndef BENCH_RUN
BENCH_RUN := outputs/bench/teacher-small-$(shell date +%Y%m%d-%H%M%S)
endif

bench-teacher: setup ## Benchmark the teacher: BENCH_STEPS (1400, ~57 min CPU, 1 h guard) on the small world, then NDS/mAP
	$(PY) -m trainer.train experiment=$(TEACHER_EXPERIMENT) dataset.generate.preset=small trainer.max_steps=$(BENCH_STEPS) \
	  trainer.max_time=$(BENCH_TIME) trainer.max_epochs=10000 trainer.check_val_every_n_epoch=5 logger=many_loggers \
	  hydra.run.dir=$(BENCH_RUN) $(ARGS)
	$(PY) -m trainer.evaluate ckpt=$(BENCH_RUN)/checkpoints/last.ckpt

synth: setup ## Synthetic nuScenes-format world (ARGS="preset=tiny|small|medium seed=0 out=... workers=2")
	$(PY) -m pipelines.synth $(ARGS)

leak: setup ## Leak, own class and coverage of an oracle label store (ARGS="data/labels/oracle.zarr [--per-keyframe]")
	$(PY) scripts/label_leak.py $(ARGS)

bench-visibility: setup ## The label stage's visibility tests compared on oracle features: leak, coverage, cost (ARGS="--scenes 3")
	$(PY) scripts/bench_visibility.py $(ARGS)

bench: setup ## Benchmark the label stage on the small synthetic world (ARGS="--preset tiny --json bench.json")
	$(PY) scripts/bench_labels.py $(ARGS)

bench-labels: bench ## Alias of `bench`

# --- camera detector: demo and benchmark (scripts/bench_train.py, scripts/render_predictions.py) ---
.PHONY: demo bench-train
DEMO_OUT    ?= outputs/demo
DEMO_BUDGET ?= 00:00:10:00

demo: setup ## World, labels, 10 min of BEVDepth+DINOv2 distillation (CPU model), evaluation table, PNGs (DEMO_OUT, DEMO_BUDGET)
	$(PY) scripts/bench_train.py --experiments bevdepth_dino --budget $(DEMO_BUDGET) --out $(DEMO_OUT) $(ARGS)
	$(PY) scripts/render_predictions.py ckpt=$(DEMO_OUT)/bevdepth_dino/checkpoints/last.ckpt out=$(DEMO_OUT)/png n=4
	@echo ""
	@echo "demo done:"
	@echo "  table        $(DEMO_OUT)/comparison.md"
	@echo "  evaluation   $(DEMO_OUT)/bevdepth_dino/eval (metrics_summary.json, extra_metrics.json)"
	@echo "  checkpoint   $(DEMO_OUT)/bevdepth_dino/checkpoints/last.ckpt"
	@echo "  PNGs         $(DEMO_OUT)/png"

# The camera benchmark: BENCH_TRAIN_STEPS optimiser steps of each experiment (one-cycle to lr 1e-3) on the small world,
# with a 1 h wall-time guard each (2800 steps: 50 min for bevdepth on 2 cores). ARGS come last and win.
BENCH_TRAIN_STEPS ?= 2800

bench-train: setup ## bevdepth vs bevdepth_dino on the small world: same seed and BENCH_TRAIN_STEPS (2800), 1 h guard each, compared
	$(PY) scripts/bench_train.py --steps $(BENCH_TRAIN_STEPS) --budget 00:01:00:00 $(ARGS)

# TiG-BEV's Table 3 on the small world: baseline, +inner depth, +inner feature, both; BENCH_TIG_SEEDS seeds each,
# BENCH_TIG_STEPS one-cycle steps (~30 min a run on 2 CPU cores), a 2 h guard per run. Resumable across machines: each
# finished run's row is appended to BENCH_TIG_LEDGER (committed), and a rerun trains only the runs it lacks.
# Needs teacher/bev in data/labels/synthetic.zarr from a teacher trained like bench-teacher:
#   make teacher TEACHER_TRAIN="trainer.max_steps=1400 trainer.max_epochs=10000"
BENCH_TIG_OUT    ?= outputs/bench_train/tig
BENCH_TIG_SEEDS  ?= 1 2
BENCH_TIG_STEPS  ?= 1400
BENCH_TIG_LEDGER ?= results/ledgers/bench_tig_cpu.jsonl
.PHONY: bench-tig
bench-tig: setup ## TiG-BEV Table 3 (bevdepth, _tig_depth, _tig_bev, _tig), BENCH_TIG_SEEDS seeds, mean +- spread; resumable
	$(PY) scripts/bench_train.py --experiments bevdepth bevdepth_tig_depth bevdepth_tig_bev bevdepth_tig \
	  --seeds $(BENCH_TIG_SEEDS) --steps $(BENCH_TIG_STEPS) --budget 00:02:00:00 --out $(BENCH_TIG_OUT) \
	  --ledger $(BENCH_TIG_LEDGER) $(ARGS)

# DualViewDistill's detector and tracker on the small world (issues 12 and 13): BEV then PV (dvd), BEV only, PV only,
# with DINOv2 distillation, with dense proposals (not in the paper) and temporal (the instance bank; dvd's own row is
# tracked by greedy association, the baseline). BENCH_DVD_STEPS one-cycle steps, seed-major; 45-75 min a run on 2 CPU
# cores, a 1.5 h guard each. Resumable across machines through BENCH_DVD_LEDGER (committed), like bench-tig.
BENCH_DVD_OUT    ?= outputs/bench_train/dvd-1500
BENCH_DVD_EXPERIMENTS ?= dvd dvd_bev dvd_proposals dvd_temporal dvd_pv dvd_dino
BENCH_DVD_SEEDS  ?= 12345
BENCH_DVD_STEPS  ?= 1500
BENCH_DVD_LEDGER ?= results/ledgers/bench_dvd_cpu.jsonl
.PHONY: bench-dvd
bench-dvd: setup ## DualViewDistill rows (BENCH_DVD_EXPERIMENTS) x BENCH_DVD_SEEDS at BENCH_DVD_STEPS, one table; resumable
	$(PY) scripts/bench_train.py --experiments $(BENCH_DVD_EXPERIMENTS) \
	  --seeds $(BENCH_DVD_SEEDS) --steps $(BENCH_DVD_STEPS) --budget 00:01:30:00 --out $(BENCH_DVD_OUT) \
	  --ledger $(BENCH_DVD_LEDGER) $(ARGS)

# An ablation in one command (scripts/ablate.py): the rows of conf/ablation/$(ABLATION).yaml x SEEDS, each trained for
# STEPS one-cycle steps (CPU model) and evaluated (NDS, mAP, AMOTA, IDS, per-class AP, foreground depth), one table with
# mean +- spread and verdicts, per-seed paired differences against each row's reference (its `vs`); resumable, across
# machines too (finished runs' rows go to a committed ledger under results/ledgers/). BUDGET is a guard, not a budget:
# a run it stops before STEPS is listed as unfinished and compared with nothing. ARGS: more options or Hydra overrides
# (ARGS="--rows b25_w0": one arm, a pilot).
ABLATION ?= table7_oracle
SEEDS    ?= 1 2
STEPS    ?= 600
JOBS     ?= 1#    runs at once; on 2 CPU cores JOBS=2 THREADS=1 trains 1.35x the steps per hour (results/ablate_cpu.md)
THREADS  ?= 2#    torch threads per run
BUDGET   ?= 00:04:00:00#  wall-clock guard per run (DD:HH:MM:SS)
.PHONY: ablate
ablate: setup ## An ablation: ABLATION=table7_oracle|table7_dino|table10_weight|table8_accumulation|label_scarce_bevdepth SEEDS="1 2" STEPS=600
	$(PY) scripts/ablate.py conf/ablation/$(ABLATION).yaml --seeds $(SEEDS) --steps $(STEPS) --budget $(BUDGET) \
	  --jobs $(JOBS) --threads $(THREADS) --ledger results/ledgers/ablate_$(STEPS)steps.jsonl $(ARGS)

clean: ## Remove caches and build debris; keeps outputs/ (checkpoints) and .venv (OUTPUTS_TOO=1, VENV_TOO=1 remove them)
	rm -rf .pytest_cache .ruff_cache build *.egg-info multirun
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	@if [ -n "$(OUTPUTS_TOO)" ]; then \
	  n=$$(find outputs -name '*.ckpt' 2>/dev/null | wc -l); echo "removing outputs/ ($$n checkpoints)"; rm -rf outputs; \
	elif [ -d outputs ]; then \
	  echo "kept outputs/ ($$(find outputs -name '*.ckpt' | wc -l) checkpoints, $$(du -sh outputs | cut -f1)): make clean OUTPUTS_TOO=1 removes it"; \
	fi
	@if [ -n "$(VENV_TOO)" ]; then rm -rf $(VENV); fi
