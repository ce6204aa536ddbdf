#!/usr/bin/env bash
# Times the README's main commands from an empty latent cache and a fresh run directory
# (what a newcomer sees on a fresh machine): `search --patch 2` and `search --patch 4`.
# Writes results/default_search_time.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
out=results/default_search_time.txt
load=$(cut -d' ' -f1-3 /proc/loadavg)
{
  for k in 2 4; do
    start=$(date +%s.%N)
    ORDEROPT_CACHE="$tmp/cache$k" python -m orderopt.search --patch "$k" --out "$tmp/run$k" > "$tmp/log$k" 2>&1
    end=$(date +%s.%N)
    rows=$(($(wc -l < "$tmp/run$k/frontier.csv") - 1))
    echo "python -m orderopt.search --patch $k from an empty cache: $(python -c "print(f'{$end - $start:.1f}')") s wall time, frontier.csv $rows rows"
  done
  echo "machine: $(nproc) cores, $(python -c 'import platform; print(platform.processor() or platform.machine())'), load average before start: $load"
  echo "command: bash experiments/time_default_search.sh"
} > "$tmp/summary"
mv "$tmp/summary" "$out"
cat "$out"
rm -rf "$tmp"
