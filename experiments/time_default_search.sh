#!/usr/bin/env bash
# Times the README's main command from an empty latent cache and a fresh run directory
# (what a newcomer sees on a fresh machine). Writes results/default_search_time.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
start=$(date +%s.%N)
ORDEROPT_CACHE="$tmp/cache" python -m orderopt.search --patch 2 --out "$tmp/run" > "$tmp/log"
end=$(date +%s.%N)
secs=$(python -c "print(f'{$end - $start:.1f}')")
{
  echo "python -m orderopt.search --patch 2 from an empty cache: ${secs} s wall time"
  echo "machine: $(nproc) cores, $(python -c 'import platform; print(platform.processor() or platform.machine())')"
  echo "command: bash experiments/time_default_search.sh"
} > results/default_search_time.txt
cat results/default_search_time.txt
rm -rf "$tmp"
