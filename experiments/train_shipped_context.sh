#!/usr/bin/env bash
# Trains the context models shipped in orderopt/weights/qQ/ for the base model of quality Q, first of
# two stages (it overwrites the shipped weights with its own): after every quality's first stage
# (q1 and q3 start from q2's), `EXPORT=1 bash experiments/converge_context.sh Q` trains each until
# converged and exports it (experiments/weights/README.md). This stage:
# the any-order proxies for 2x2 and 4x4 patches (a quarter of each batch with the
# autoregressive context, so that they rate autoregressive on the same weights) and the
# dedicated autoregressive baseline, all with the same latents, crops, batch, steps and seed,
# with held-out learning curves (embedded photographs, every 500 steps), then exports them as
# fp16 and copies their records to results/context/qQ_*.json.
# Training latents: BSDS500 train + test; held-out: the embedded photographs. Resumable.
# INIT_FROM=Q2 starts each model from the shipped one of quality Q2 (fine-tuning, fewer steps).
#   bash experiments/train_shipped_context.sh QUALITY [BSDS500_DIR] [STEPS]
# The shipped models: q2 from scratch with 3,000 steps, then q1 and q3 with
#   INIT_FROM=2 bash experiments/train_shipped_context.sh 1 ../shared/datasets/bsds500 1500
# and the proxies of q1 and q3, still improving then, for 1,500 more steps from their own weights
# (Q = 1, 3; K = 2, 4):
#   python -m orderopt.train context --proxy --patch K --raster-fraction 0.25 \
#     --train-latents checkpoints/context-qQ/train_latents.pt --eval-latents checkpoints/context-qQ/held_latents.pt \
#     --steps 1500 --batch 16 --crop 16 --seed 1 --eval-every 500 --threads 1 \
#     --init orderopt/weights/qQ/proxy_kK.pt --out checkpoints/context-qQb/proxy_kK.pt
# (export each to orderopt/weights/qQ/ and copy its .json to results/context/qQ_proxy_kK.json, the
# first stage's record kept as qQ_proxy_kK.stage1.json); q3's proxies, still improving, for a
# third stage the same way with --seed 2, --init from the second stage's export and --out
# checkpoints/context-q3c/proxy_kK.pt (the second stage's record kept as q3_proxy_kK.stage2.json)
# The Gaussian-mixture (K = 3) proxies of quality 2, with q2's protocol from scratch (K = 2, 4):
#   python -m orderopt.train context --proxy --patch K --raster-fraction 0.25 --mixture 3 \
#     --train-latents checkpoints/context-q2/train_latents.pt --eval-latents checkpoints/context-q2/held_latents.pt \
#     --steps 3000 --batch 16 --crop 16 --seed 0 --eval-every 500 --threads 1 --out checkpoints/context-q2-mix3/proxy_kK.pt
# exported to orderopt/weights/q2/proxy_kK_mix3.pt, records in results/context/q2_proxy_kK_mix3.json
set -euo pipefail
cd "$(dirname "$0")/.."
Q=${1:?usage: train_shipped_context.sh QUALITY [BSDS500_DIR] [STEPS]}
BSDS=${2:-../shared/datasets/bsds500}
STEPS=${3:-3000}
BASE=orderopt/weights/q$Q/base.pt
OUT=checkpoints/context-q$Q
mkdir -p "$OUT" results/context
[ -f "$OUT/train_latents.pt" ] || python -m orderopt.latents --images "$BSDS/train" "$BSDS/test" --model "$BASE" --out "$OUT/train_latents.pt"
[ -f "$OUT/held_latents.pt" ] || python -m orderopt.latents --model "$BASE" --out "$OUT/held_latents.pt"
COMMON=(--train-latents "$OUT/train_latents.pt" --eval-latents "$OUT/held_latents.pt" --steps "$STEPS"
        --batch 16 --crop 16 --seed 0 --eval-every 500 --threads 1)
init() { [ -n "${INIT_FROM:-}" ] && echo "--init orderopt/weights/q$INIT_FROM/$1.pt" || true; }
# shellcheck disable=SC2046
python -m orderopt.train context --proxy --patch 2 --raster-fraction 0.25 "${COMMON[@]}" $(init proxy_k2) \
    --out "$OUT/proxy_k2.pt" &
# shellcheck disable=SC2046
python -m orderopt.train context --proxy --patch 4 --raster-fraction 0.25 "${COMMON[@]}" $(init proxy_k4) \
    --out "$OUT/proxy_k4.pt" &
wait
# shellcheck disable=SC2046
python -m orderopt.train context --kind autoregressive "${COMMON[@]}" --threads 2 $(init autoregressive) \
    --out "$OUT/autoregressive.pt"
for name in proxy_k2 proxy_k4 autoregressive; do
  python -m orderopt.train export --ckpt "$OUT/$name.pt" --out "orderopt/weights/q$Q/$name.pt"
  cp "$OUT/$name.json" "results/context/q${Q}_$name.json"
done
