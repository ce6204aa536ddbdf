#!/usr/bin/env bash
# BD-rate over the three qualities on the dedicated basis: at each quality, the best order the
# exact DP finds on the proxy, the published orders (the paper's, TinyLIC's) and the baselines
# hyperprior-only, checkerboard and autoregressive each get a dedicated model (the paper's
# masked convolutions), fine-tuned STEPS steps from the proxy on the BSDS500 train+test latents
# and measured on BSDS500 val (100 unseen photographs of the training domain: fine-tuned on
# BSDS500, dedicated models lose rate on other photographs, results/retired.md). Every row of a
# run is verified, so its table is on the dedicated basis; bd_rate_contexts.py then reads them
# with the base models' PSNR on the same images.
# The proxy of each quality is its shipped one (orderopt/weights/qQ/proxy_kK.pt), trained until its
# rate on BSDS500 val stopped improving (results/context/converge/).
# Caveat: the DP picks its order on the same val latents its dedicated models are measured on.
# Resumable: re-run after an interruption.
# 4×4: BSDS500 val has 12 times the embedded photographs' patches, so the DP's cost table is
# filled from 1/64 of its sets (TABLE_FRACTION; results/bench_cost_table.md: the DP optimum was
# found in 6 of 6 draws at that fraction; expect about 12 times its fill time there).
# EARLY_STOP=S: instead of a fixed budget, each dedicated model stops once its rate on a fixed
# tenth of the training images (held out from its training) has not reached a new lowest in two
# measurements S steps apart, and keeps its lowest weights (STEPS, default 2000, is then a cap):
# fixed-budget fine-tuning past ~250 steps raises every spatial model's held-out rate, the 4x4
# ones' most (results/dedicated_stability_patch4.md). Its runs end in -stop, its table in
# bd_rate_contexts_dedicated_stop; each run starts from the fixed-budget run's cost table when
# there is one (same proxy and latents: the DP picks the same order).
#   [PATCHES="2 4"] [QUALITIES="1 2 3"] [STEPS=500] [EARLY_STOP=0] [JOBS=2] bash experiments/dedicated_bd_runs.sh [BSDS500_DIR]
# (the BD-rate table needs all three qualities; a subset only makes their runs)
set -euo pipefail
cd "$(dirname "$0")/.."
BSDS=${1:-../shared/datasets/bsds500}
EARLY_STOP=${EARLY_STOP:-0}
STOP=(--verify-early-stop 0)  # the fixed budget of the committed table (early stop is the default)
SUFFIX=""
if [ "$EARLY_STOP" != 0 ]; then
  STEPS=${STEPS:-2000}
  STOP=(--verify-early-stop "$EARLY_STOP")
  SUFFIX=-stop
fi
STEPS=${STEPS:-500}
JOBS=${JOBS:-2}
PATCHES=${PATCHES:-2 4}
QUALITIES=${QUALITIES:-1 2 3}
TABLE_FRACTION=${TABLE_FRACTION:-0.015625}
for K in $PATCHES; do
  for Q in $QUALITIES; do
    LAT=checkpoints/context-q$Q  # shared with experiments/converge_context.sh
    mkdir -p "$LAT"
    [ -f "$LAT/train_latents.pt" ] || python -m orderopt.latents --quality "$Q" \
        --images "$BSDS/train" "$BSDS/test" --out "$LAT/train_latents.pt"
    [ -f "$LAT/val_latents.pt" ] || python -m orderopt.latents --quality "$Q" --images "$BSDS/val" \
        --out "$LAT/val_latents.pt"
    PROXY=orderopt/weights/q$Q/proxy_k$K.pt
    OUT=results/search-patch$K-q$Q-bsdsval-dedicated$SUFFIX
    FIXED=results/search-patch$K-q$Q-bsdsval-dedicated/costs.npz
    if [ -n "$SUFFIX" ] && [ -f "$FIXED" ] && [ ! -f "$OUT/costs.npz" ]; then
      mkdir -p "$OUT" && cp "$FIXED" "$OUT/costs.npz"
    fi
    FRACTION=()
    [ "$K" = 4 ] && FRACTION=(--table-fraction "$TABLE_FRACTION")
    python -m orderopt.search --quality "$Q" --patch "$K" --strategy dp "${FRACTION[@]}" --latents "$LAT/val_latents.pt" \
        --proxy "$PROXY" --verify 1 --train-latents "$LAT/train_latents.pt" --verify-steps "$STEPS" \
        --verify-init proxy "${STOP[@]}" --seed 0 --jobs "$JOBS" --dedicated-dir "checkpoints/dedicated-bd-q$Q" \
        --out "$OUT"
  done
done
[ "$(echo $QUALITIES | tr ' ' '\n' | sort -u | tr '\n' ' ')" = "1 2 3 " ] || {
  echo "the BD-rate table needs qualities 1 2 3; made the runs of $QUALITIES only" >&2; exit 0; }
# The table holds every patch size whose three runs exist, not only the ones made by this call.
all=()
for K in 2 4; do
  runs=(results/search-patch$K-q{1,2,3}-bsdsval-dedicated$SUFFIX)
  [ -f "${runs[0]}/manifest.json" ] && [ -f "${runs[1]}/manifest.json" ] && [ -f "${runs[2]}/manifest.json" ] \
    && all+=(--runs "${runs[@]}")
done
python experiments/bd_rate_contexts.py "${all[@]}" --images "$BSDS/val" --stem "bd_rate_contexts_dedicated${SUFFIX//-/_}"
