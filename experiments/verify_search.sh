#!/usr/bin/env bash
# Verifies the proxy against dedicated models on the shipped base model: the 2x2
# (exhaustive) and 4x4 (greedy + 200 random orders) searches with --verify, every
# dedicated model trained for the proxies' budget (1,500 steps, batch 16, 16x16 latent
# crops, seed 0) on BSDS500 train+test latents and measured on the embedded photographs.
# Both runs share one folder of dedicated models, so the baselines are trained once.
# Resumable: re-run after an interruption. About 35 min (2x2) + 60 min (4x4) on 2 CPU cores.
#   bash experiments/verify_search.sh [TRAIN_LATENTS] [JOBS]
set -euo pipefail
cd "$(dirname "$0")/.."
TRAIN=${1:-checkpoints/context/train_latents.pt}  # written by experiments/train_shipped_context.sh
JOBS=${2:-2}
COMMON=(--train-latents "$TRAIN" --verify-steps 1500 --seed 0 --jobs "$JOBS" --dedicated-dir checkpoints/dedicated)
python -m orderopt.search --patch 2 --out results/search-patch2 --verify 4 "${COMMON[@]}"
python -m orderopt.search --patch 4 --strategy greedy --random 200 --out results/search-patch4 --verify 2 "${COMMON[@]}"
