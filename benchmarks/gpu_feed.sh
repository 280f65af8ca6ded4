#!/usr/bin/env bash
# Issue #43's GPU figures, in one device call of under 10 minutes on a lent H100/H200: the profile of the DON, cnn
# and cnnd training steps on cuda and their steps/s (benchmarks/train_step_profile.py), plain and compiled by
# inductor. The device machine has torch but not MuJoCo, so the data is made here first (about 3 minutes on 2 cores):
#
#   mkdir -p data/gpu && export MUJOCO_GL=egl
#   .venv/bin/dckp collect-views --task lift --scenes 4 --arm-only 1 --out data/gpu/lift_views.h5
#   .venv/bin/dckp fuse data/gpu/lift_views.h5
#   .venv/bin/dckp collect --task lift --out data/gpu/lift_demos.h5
#
# and carried: device run with command `bash benchmarks/gpu_feed.sh`, carry ["data/gpu"]. Its results come back in
# $OUT (results/gpu.json and results/train_step_profile.{json,md} with the gpu entries added); copy them to results/.
set -euo pipefail
OUT=${OUT:-/tmp/gpu_feed}
mkdir -p "$OUT"
cp results/gpu.json results/train_step_profile.json "$OUT"/
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
PYTHONPATH=src timeout 540 python3 benchmarks/train_step_profile.py --views data/gpu/lift_views.h5 \
    --demos data/gpu/lift_demos.h5 --device cuda --threads 16 --workers 8 --warmup 10 --steps 100 --repeats 1 \
    --compile inductor --results "$OUT"
