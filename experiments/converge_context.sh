#!/usr/bin/env bash
# Trains the shipped context models of quality Q on until their held-out rate stops improving
# (`train context --converge`), from the shipped weights, and records their curves in
# results/context/converge/qQ_NAME.json. The stopping rule watches BSDS500 val (100 photographs
# of the training domain that no search rates), so the embedded photographs and wikiphotos stay
# untouched by the choice of the stopping point. Every run resumes where it stopped.
#   bash experiments/converge_context.sh Q [NAME ...]
# NAME: proxy_k2 proxy_k4 autoregressive (default: these three), proxy_k2_mix3 proxy_k4_mix3 (the
# K = 3 mixture proxies, shipped for quality 2).
# Environment: BSDS (../shared/datasets/bsds500), PATIENCE (4 points of 500 steps), CAP (40000
# steps), THREADS (1 per model), NICE (5), EXPORT=1 to also export the converged models into
# orderopt/weights/qQ/ (then rerun the results that depend on them: experiments/regenerate_results.sh).
# To continue a run whose checkpoint is gone from an fp16 snapshot (one NAME only): INIT=snapshot.pt
# and MORE="--lr 1e-4 --lr-drops 1" (the drops it had left); its record then starts at the snapshot.
set -euo pipefail
cd "$(dirname "$0")/.."
Q=${1:?usage: converge_context.sh QUALITY [NAME ...]}
shift
NAMES=("$@")
[ ${#NAMES[@]} -gt 0 ] || NAMES=(proxy_k2 proxy_k4 autoregressive)
BSDS=${BSDS:-../shared/datasets/bsds500}
PATIENCE=${PATIENCE:-4}
CAP=${CAP:-40000}
THREADS=${THREADS:-1}
NICE=${NICE:-5}
LAT=checkpoints/context-q$Q
OUT=checkpoints/converge-q$Q
mkdir -p "$LAT" "$OUT" results/context/converge
[ -f "$LAT/train_latents.pt" ] || python -m orderopt.latents --quality "$Q" --images "$BSDS/train" "$BSDS/test" \
    --out "$LAT/train_latents.pt"
[ -f "$LAT/val_latents.pt" ] || python -m orderopt.latents --quality "$Q" --images "$BSDS/val" \
    --out "$LAT/val_latents.pt"
declare -A WHAT=([proxy_k2]="--proxy --patch 2 --raster-fraction 0.25"
                 [proxy_k4]="--proxy --patch 4 --raster-fraction 0.25"
                 [autoregressive]="--kind autoregressive"
                 [proxy_k2_mix3]="--proxy --patch 2 --raster-fraction 0.25 --mixture 3"
                 [proxy_k4_mix3]="--proxy --patch 4 --raster-fraction 0.25 --mixture 3")
INIT=${INIT:-}
MORE=${MORE:-}
[ -z "$INIT" ] || [ ${#NAMES[@]} -eq 1 ] || { echo "INIT needs exactly one NAME" >&2; exit 2; }
# train.py ignores --init once --out exists: a run from a snapshot must not resume another one
[ -z "$INIT" ] || [ ! -e "$OUT/${NAMES[0]}.pt" ] || { echo "INIT=$INIT, but $OUT/${NAMES[0]}.pt" \
  "exists and would be resumed instead: move it away, or drop INIT to resume it" >&2; exit 2; }
for name in "${NAMES[@]}"; do
  [ -n "${WHAT[$name]:-}" ] || { echo "unknown model $name (${!WHAT[*]})" >&2; exit 2; }
done
declare -A PID
for name in "${NAMES[@]}"; do
  rm -f "$OUT/$name.json"  # a failed run must not leave an earlier run's record to copy
  # shellcheck disable=SC2086
  nice -n "$NICE" python -m orderopt.train context ${WHAT[$name]} $MORE --quality "$Q" \
      --init "${INIT:-orderopt/weights/q$Q/$name.pt}" --train-latents "$LAT/train_latents.pt" \
      --eval-latents "$LAT/val_latents.pt" --steps "$CAP" --batch 16 --crop 16 --seed 3 \
      --eval-every 500 --converge "$PATIENCE" --threads "$THREADS" --out "$OUT/$name.pt" \
      > "$OUT/$name.log" 2>&1 &
  PID[$name]=$!
done
failed=0
for name in "${NAMES[@]}"; do
  if ! wait "${PID[$name]}"; then echo "$name failed: see $OUT/$name.log" >&2; failed=1; continue; fi
  # the record, with the command that reproduces it (for results/README.md)
  python -c 'import json, sys; from orderopt.files import write_json
d = json.load(open(sys.argv[1])); d["command"] = sys.argv[3]; write_json(d, sys.argv[2])' \
    "$OUT/$name.json" "results/context/converge/q${Q}_$name.json" \
    "${INIT:+INIT=$(printf %q "$INIT") }${MORE:+MORE=$(printf %q "$MORE") }PATIENCE=$PATIENCE CAP=$CAP bash experiments/converge_context.sh $Q $name"
  if [ "${EXPORT:-0}" = 1 ]; then
    if python -c "import json,sys; sys.exit(not json.load(open('$OUT/$name.json'))['convergence']['converged'])"; then
      python -m orderopt.train export --ckpt "$OUT/$name.pt" --out "orderopt/weights/q$Q/$name.pt"
    else
      echo "$name stopped at the step cap, not converged: not exported (raise CAP and rerun)" >&2
    fi
  fi
done
exit "$failed"
