#!/usr/bin/env bash
# Reproduce the rotated-digits study (docs/study/README.md): 6 test domains x 3 trial seeds of
# ERM on the embedded dataset, each run logging the official NAC-ME and a 4 x 3 alpha/r grid
# from the same forward passes, then the tuning/sensitivity analysis and the report.
# About 50 minutes on 2 CPU cores (two sweeps of 9 runs side by side, one thread each).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-outputs/study}
mkdir -p "$out"
common=(trial_seed=0,1,2 trainer.max_steps=1000 trainer.val_check_interval=50
        'nac_grid.alpha=[1,10,100,1000]' 'nac_grid.r=[2,5,20]' logger=csv test=false)
OMP_NUM_THREADS=1 python train.py -m 'dataset.test_envs=[0],[1],[2]' "${common[@]}" \
  hydra.sweep.dir="$out/a" > "$out/a.log" 2>&1 &
OMP_NUM_THREADS=1 python train.py -m 'dataset.test_envs=[3],[4],[5]' "${common[@]}" \
  hydra.sweep.dir="$out/b" > "$out/b.log" 2>&1 &
wait
python docs/study/analyze.py "$out" --tune-env 0 --out docs/study
chosen=$(python -c "import json; print(json.load(open('docs/study/tuning.json'))['chosen'])")
# all six test domains (the tuning domain included), for the figures and the full picture
python -m nac_lightning.report "$out" --out docs/study/report_all --criteria "$chosen" --figure-key "$chosen"
