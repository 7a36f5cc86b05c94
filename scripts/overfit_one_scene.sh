#!/bin/bash
# Can a camera detector fit ONE training scene? Train on the first training scene of the small synthetic world
# (20 keyframes) with the CPU bench model (trainer.bench.cpu) and bench_train.py's one-cycle schedule, then score it
# with the devkit on that same scene (trainer.evaluate split=train limit_scenes=1). A detector that cannot localise its own training
# boxes has a bug or a learning-speed problem, not a generalisation one.
#   bash scripts/overfit_one_scene.sh [EXPERIMENT=dvd] [STEPS=400] [extra Hydra overrides...]
# Writes outputs/diag/overfit-<EXPERIMENT>-<STEPS>/ (run, eval-train/metrics_summary.json) and its .train/.eval logs.
set -euo pipefail
cd "$(dirname "$0")/.."
EXP=${1:-dvd}; STEPS=${2:-400}
RUN=outputs/diag/overfit-$EXP-$STEPS
mkdir -p outputs/diag
MODEL=$(.venv/bin/python -c "from trainer.bench.cpu import CPU_DEPTH, cpu_model; print(' '.join(cpu_model('$EXP') + CPU_DEPTH['default']))")
.venv/bin/python -m trainer.train experiment="$EXP" dataset=synthetic dataset.root=data/synthetic/small-seed0 \
  dataset.generate.preset=small data.label_store=data/labels/synthetic.zarr $MODEL data.limit_scenes=1 \
  hydra.run.dir="$RUN" seed=1 threads=1 data.batch_size=2 data.num_workers=1 trainer.max_epochs=100000 \
  trainer.min_epochs=0 trainer.check_val_every_n_epoch=100000 trainer.max_steps="$STEPS" model.scheduler_interval=step \
  model.scheduler=null model.optimizer.lr=0.001 \
  '++model.scheduler={_target_:torch.optim.lr_scheduler.OneCycleLR,_partial_:true,max_lr:${model.optimizer.lr},pct_start:0.3,div_factor:10.0,final_div_factor:100.0}' \
  trainer=cpu callbacks.progress_bar.refresh_rate=50 "${@:3}" > "$RUN.train.log" 2>&1
.venv/bin/python -m trainer.evaluate ckpt="$RUN/checkpoints/last.ckpt" out="$RUN/eval-train" hydra.run.dir="$RUN/eval-train" \
  split=train limit_scenes=1 threads=1 num_workers=0 tracking=false > "$RUN.eval.log" 2>&1
tail -20 "$RUN.eval.log"
