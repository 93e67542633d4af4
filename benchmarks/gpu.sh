#!/usr/bin/env bash
# Everything to run on a CUDA machine, in well under 5 minutes (an H200 ran it in about 1-2).
# Usage: bash benchmarks/gpu.sh [OUT_DIR]   (results as JSON/logs in OUT_DIR, default ./gpu-results)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 WANDB_MODE=offline
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python benchmarks/cuda_check.py --device cuda 2>&1 | tee "$out/cuda_check.log"
python benchmarks/coverage_throughput.py --device cuda --json "$out/coverage_throughput.json" 2>&1 \
  | tee "$out/coverage_throughput.log"
python benchmarks/callback_overhead.py --accelerator gpu --images 4096 --size 224 --batch 256 \
  --repeats 3 --json "$out/callback_overhead_224.json" 2>&1 | tee "$out/callback_overhead_224.log"
python benchmarks/callback_overhead.py --accelerator gpu --images 4096 --size 224 --batch 256 \
  --repeats 3 --precision bf16-mixed --json "$out/callback_overhead_224_bf16.json" 2>&1 \
  | tee "$out/callback_overhead_224_bf16.log"
