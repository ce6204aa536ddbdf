#!/usr/bin/env bash
# The shipped models' search runs at the three qualities, on one rate basis (the proxies, which
# also rate autoregressive) with 95% intervals over images, held out on the embedded
# photographs (q1-q3) and on the 49 clean photographs of wikiphotos (q2, 2x2); the frontier of
# every run with the whole cost table; the BD-rate table over the qualities; the base models
# against JPEG, WebP and JPEG 2000; the context models' learning curves; the report.
#   bash experiments/quality_runs.sh [WIKIPHOTOS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
WIKI=${1:-../shared/datasets/wikiphotos}
for q in 2 1 3; do
  suffix=$([ "$q" = 2 ] && echo "" || echo "-q$q")
  python -m orderopt.search --quality "$q" --patch 2 --out "results/search-patch2$suffix" --force
  python -m orderopt.search --quality "$q" --patch 4 --random 50 --out "results/search-patch4$suffix" --force
done
python -m orderopt.search --patch 2 --images "$WIKI" --out results/search-patch2-wikiphotos --force
python experiments/bd_rate_contexts.py \
  --runs results/search-patch2-q1 results/search-patch2 results/search-patch2-q3 \
  --runs results/search-patch4-q1 results/search-patch4 results/search-patch4-q3
python experiments/one_basis_summary.py results/search-patch2 results/search-patch4 results/search-patch2-wikiphotos
python experiments/context_curves.py
python -m orderopt.report results/search-patch2 results/search-patch4 results/search-patch2-wikiphotos \
  --out results/report --decode-time results/decode_time.json
python experiments/base_vs_classic.py
# the Gaussian-mixture (K = 3) proxies of quality 2 against the Gaussian ones (same latents)
python -m orderopt.search --quality 2 --patch 2 --mixture 3 --out results/search-patch2-mix3 --force
python -m orderopt.search --quality 2 --patch 4 --mixture 3 --random 50 --out results/search-patch4-mix3 --force
python experiments/mixture_orders.py --pair results/search-patch2 results/search-patch2-mix3 \
  --pair results/search-patch4-dp results/search-patch4-mix3
python experiments/results_index.py
