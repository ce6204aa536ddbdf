#!/usr/bin/env bash
# The shipped model's search runs on one rate basis (the proxies, which also rate
# autoregressive), with 95% intervals over images, held out on the embedded photographs and
# on the 49 clean photographs of ../shared/datasets/wikiphotos (never trained on); the
# proxies' baseline gaps against dedicated models trained with the same budget; the report.
#   bash experiments/one_basis_runs.sh [WIKIPHOTOS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
WIKI=${1:-../shared/datasets/wikiphotos}
python -m orderopt.search --patch 2 --out results/search-patch2 --force
python -m orderopt.search --patch 4 --strategy greedy --random 200 --out results/search-patch4 --force
python -m orderopt.search --patch 2 --images "$WIKI" --out results/search-patch2-wikiphotos --force
python -m orderopt.search --patch 4 --strategy greedy --random 50 --images "$WIKI" --out results/search-patch4-wikiphotos --force
python experiments/proxy_gaps.py --train-latents checkpoints/context/train_latents.pt --autoregressive orderopt/weights/autoregressive.pt
python experiments/proxy_gaps.py --train-latents checkpoints/context/train_latents.pt --autoregressive orderopt/weights/autoregressive.pt --images "$WIKI" --stem proxy_gaps_wikiphotos
python -m orderopt.report results/search-patch2 results/search-patch4 results/search-patch2-wikiphotos \
    results/search-patch4-wikiphotos --out results/report --decode-time results/decode_time.json
