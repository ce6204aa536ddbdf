#!/usr/bin/env bash
# The proxies' baseline gaps against dedicated hyperprior-only, checkerboard and autoregressive
# models trained from scratch with the proxies' budget (the default quality's models), held
# out on the embedded photographs and on the 49 clean photographs of wikiphotos. The search
# runs themselves: experiments/quality_runs.sh.
#   bash experiments/one_basis_runs.sh [WIKIPHOTOS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
WIKI=${1:-../shared/datasets/wikiphotos}
LAT=checkpoints/context-q2/train_latents.pt  # made by experiments/train_shipped_context.sh 2
python experiments/proxy_gaps.py --train-latents "$LAT" --autoregressive orderopt/weights/q2/autoregressive.pt
python experiments/proxy_gaps.py --train-latents "$LAT" --autoregressive orderopt/weights/q2/autoregressive.pt \
    --images "$WIKI" --stem proxy_gaps_wikiphotos
