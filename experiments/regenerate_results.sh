#!/usr/bin/env bash
# Regenerates every file under results/ from the shipped weights (CPU is fine):
#   rate-engine speed, decoding time, and the shipped models' search
#   runs for 2x2 (exhaustive) and 4x4 (DP and frontier on a surrogate of the cost table),
#   verified with dedicated models (about 2 h of training on 2 CPU cores), with their report.
#   The whole exact 4x4 table (about 30 minutes on a 2-core CPU) is computed once, by the
#   surrogate benchmark, and the exact 4x4 run resumes from it.
# Context models first: bash experiments/train_shipped_context.sh 2 (3,000 steps each), then
# INIT_FROM=2 bash experiments/train_shipped_context.sh Q ../shared/datasets/bsds500 1500 for Q = 1, 3,
# then each until converged: EXPORT=1 bash experiments/converge_context.sh Q (experiments/weights/README.md).
#   bash experiments/regenerate_results.sh [BSDS500_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
BSDS=${1:-../shared/datasets/bsds500}
python experiments/bench_context.py --out results
python experiments/bench_decode.py --out results
python experiments/bench_decode.py --coder gaussian --out results
for i in 1 2; do python experiments/bench_decode.py --precision float32 --out results/decode_time_reruns/$i; done  # the spread
python experiments/bench_train.py --out results
python experiments/bench_decode.py --coders-only --out results
python experiments/precision_rate.py --out results
mkdir -p results/search-patch4-dp
python experiments/bench_cost_table.py --out results --save-table results/search-patch4-dp/costs.npz
python -m orderopt.search --patch 4 --table-fraction 1 --random 50 --out results/search-patch4-dp  # resumes the table
# GPU figures: `bash experiments/gpu_checks.sh OUT` on a GPU machine; copy OUT's files to results/
# and results/gpu/runN, then `python experiments/gpu_summary.py`
# training latents (BSDS500 train + test) and unseen latents of the same domain (val)
python -m orderopt.latents --images "$BSDS/train" "$BSDS/test" --out checkpoints/context/train_latents.pt
python -m orderopt.latents --images "$BSDS/val" --out checkpoints/context/val_latents.pt
# 2x2, held out on the embedded photographs: dedicated models fine-tuned from the proxy, and from scratch
PATCHES=2 bash experiments/verify_search.sh proxy
PATCHES=2 bash experiments/verify_search.sh scratch
python experiments/dedicated_spread.py results/search-patch2-from-proxy results/search-patch2-scratch \
    --out results/dedicated_spread_patch2
# Held out on BSDS500 val, the training latents' domain (100 unseen images), 500 steps: fine-tuning
# specialises models to BSDS500 and, past ~250 steps, loses rate on the photographs (results/retired.md)
HELD_OUT=checkpoints/context/val_latents.pt STEPS_OVERRIDE=500 RANDOM_ORDERS=20 \
    bash experiments/verify_search.sh proxy
# Does the dedicated ranking still change with more steps? Quality 2's 2x2 proxy, its
# dedicated models fine-tuned 2,000 steps and measured every 250 on BSDS500 val (~1.5 h on 2 cores)
[ -f checkpoints/context-q2/train_latents.pt ] || python -m orderopt.latents --quality 2 \
    --images "$BSDS/train" "$BSDS/test" --out checkpoints/context-q2/train_latents.pt
[ -f checkpoints/context-q2/val_latents.pt ] || python -m orderopt.latents --quality 2 \
    --images "$BSDS/val" --out checkpoints/context-q2/val_latents.pt
python -m orderopt.search --quality 2 --patch 2 --latents checkpoints/context-q2/val_latents.pt \
    --proxy orderopt/weights/q2/proxy_k2.pt --verify 3 --train-latents checkpoints/context-q2/train_latents.pt \
    --verify-steps 2000 --verify-curve 250 --verify-init proxy --seed 0 --jobs 2 \
    --dedicated-dir checkpoints/dedicated-curve-q2-bsdsval --out results/search-patch2-bsdsval-verify-curve
python experiments/dedicated_stability.py results/search-patch2-bsdsval-verify-curve \
    --out results/dedicated_stability_patch2
# the same for 4x4 (the 4x4 proxy, its DP pick and the other candidates; ~3 h on 2 cores)
python -m orderopt.search --quality 2 --patch 4 --strategy dp --table-fraction 0.015625 \
    --latents checkpoints/context-q2/val_latents.pt --proxy orderopt/weights/q2/proxy_k4.pt \
    --verify 1 --train-latents checkpoints/context-q2/train_latents.pt --verify-steps 2000 --verify-curve 250 \
    --verify-init proxy --seed 0 --jobs 2 --dedicated-dir checkpoints/dedicated-curve-q2-k4-bsdsval \
    --out results/search-patch4-bsdsval-verify-curve
python experiments/dedicated_stability.py results/search-patch4-bsdsval-verify-curve \
    --out results/dedicated_stability_patch4
# BD-rate over q1-q3 on dedicated models: 500 steps each (2x2 and 4x4), then early-stopped
# (each model at its lowest on a tenth of the training images; ~15 min (2x2) and ~35 min (4x4) a
# quality on 2 cores)
bash experiments/dedicated_bd_runs.sh "$BSDS"
EARLY_STOP=125 bash experiments/dedicated_bd_runs.sh "$BSDS"
python experiments/bench_base_step.py --out results
# the shipped model's runs on one basis (embedded photographs and wikiphotos), the proxies'
# baseline gaps (previous model's protocol), then the three qualities' runs, BD-rates, base
# models against classic codecs, context curves, summary table, report and index of results/
bash experiments/one_basis_runs.sh
bash experiments/quality_runs.sh
bash experiments/time_default_search.sh
bash experiments/time_tests.sh
python experiments/results_index.py
