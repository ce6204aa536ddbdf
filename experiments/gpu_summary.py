"""Summarise the GPU runs of experiments/gpu_checks.sh that are kept under results/.

Prints, and writes to results/gpu/summary.md:
- decoding-time ratios of every run (results/gpu/run*/decode_time_cuda.json), with their range
  and the ŷ coder of each (runs 1–7 used constriction's quantized Gaussian);
- context-model training speed of every run (results/gpu/run*/bench_train_cuda.json);
- the 4×4 cost table computed on the GPU against the CPU one (largest relative difference,
  whether the DP optimum is the same order, and the time of each).

    python experiments/gpu_summary.py [--results results] [--out RESULTS/gpu/summary.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from orderopt.files import atomic_write

RATIOS = {
    "2x2_over_checkerboard": "2×2 / checkerboard, ŷ decoding",
    "4x4_over_checkerboard": "4×4 / checkerboard, ŷ decoding",
    "autoregressive_over_4x4_on_768x512": "autoregressive / 4×4 on 768×512, ŷ decoding",
    "autoregressive_over_4x4_network_only_on_768x512": "autoregressive / 4×4 on 768×512, context network",
    "autoregressive_over_4x4_on_768x512_bfloat16": "autoregressive / 4×4 on 768×512, ŷ decoding, bfloat16",
    "autoregressive_over_4x4_on_768x512_fastest": "autoregressive / 4×4 on 768×512, fastest of each",
    "autoregressive_over_hyperprior_on_768x512_fastest": (
        "ceiling: autoregressive / hyperprior-only on 768×512, fastest of each"
    ),
}


def row(label: str, vals: list[float | None], digits: int) -> str:
    """A table row of one figure per run ('–' where a run lacks it) and the range of the rest."""
    cells = " | ".join("–" if v is None else f"{v:.{digits}f}" for v in vals)
    have = [v for v in vals if v is not None]
    return f"| {label} | {cells} | {min(have):.{digits}f}–{max(have):.{digits}f} |"


def decode_lines(results: Path) -> list[str]:
    runs = sorted((results / "gpu").glob("run*/decode_time_cuda.json"))
    if not runs:
        return ["(no GPU decoding runs)"]
    data = [json.loads(p.read_text()) for p in runs]
    head = "| ratio | " + " | ".join(p.parent.name for p in runs) + " | range |"
    coders = " | ".join(d.get("coder", "gaussian") for d in data)
    lines = [
        f"Decoding time on {data[0]['device']} (ranges mix coders: compare a run's own column):",
        "",
        head,
        "|---" * (len(runs) + 2) + "|",
        f"| ŷ coder | {coders} | |",
    ]
    for key, label in RATIOS.items():
        if any(key in d["ratios"] for d in data):  # older runs lack the bfloat16 figures
            lines.append(row(label, [d["ratios"].get(key) for d in data], 2))
    names = dict.fromkeys(name for d in data for name in d["median_over_images"])
    for name in names:
        for key, what in (("network_s", "context network"), ("latent_s", "ŷ decoding")):
            vals = [d["median_over_images"].get(name, {}).get(key) for d in data]
            vals = [None if v is None else 1e3 * v for v in vals]
            lines.append(row(f"{name}: {what} (ms, median over images)", vals, 1))
    return lines


def train_lines(results: Path) -> list[str]:
    runs = sorted((results / "gpu").glob("run*/bench_train_cuda.json"))
    if not runs:
        return ["(no GPU training runs)"]
    data = [json.loads(p.read_text())["models"] for p in runs]
    lines = [
        "Context-model training speed on the GPU (steps/s):",
        "",
        "| model | " + " | ".join(p.parent.name for p in runs) + " | range |",
        "|---" * (len(runs) + 2) + "|",
    ]
    for name in data[-1]:
        vals = [d[name]["steps_per_s"] for d in data if name in d]
        cells = " | ".join(f"{d[name]['steps_per_s']:.1f}" if name in d else "–" for d in data)
        lines.append(f"| {name} | {cells} | {min(vals):.1f}–{max(vals):.1f} |")
    return lines


def table_lines(results: Path) -> list[str]:
    cpu, gpu = results / "search-patch4-dp", results / "search-patch4-dp-cuda"
    if not (cpu / "costs.npz").is_file() or not (gpu / "costs.npz").is_file():
        return ["(no CPU/GPU pair of 4×4 DP runs)"]
    ma, mb = (json.loads((r / "manifest.json").read_text()) for r in (cpu, gpu))
    if ma.get("model_hash") != mb.get("model_hash"):  # another model's table: nothing to compare
        return [
            f"(the CPU and GPU 4×4 DP runs are of different models, {ma.get('model_hash')} and "
            f"{mb.get('model_hash')}: rerun the GPU one)"
        ]
    a, b = np.load(cpu / "costs.npz")["table"], np.load(gpu / "costs.npz")["table"]
    same_nan = bool(np.array_equal(np.isnan(a), np.isnan(b)))
    rel = float(np.nanmax(np.abs(a - b) / np.abs(a)))

    def best(run: Path) -> str:
        c = pd.read_csv(run / "candidates.csv")
        return str(c[c["source"] == "dp"]["order"].iloc[0])

    return [
        f"4×4 cost table (2^16 × 16 entries): {ma['device']} {ma['timings_s']['table_s']:.0f} s, "
        f"{mb['device']} {mb['timings_s']['table_s']:.1f} s; largest relative difference {rel:.1e} "
        f"(same undefined entries: {same_nan}); DP optimum on the CPU `{best(cpu)}`, on the GPU "
        f"`{best(gpu)}` ({'the same' if best(cpu) == best(gpu) else 'DIFFERENT'})."
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default="results", help="results folder (default results)")
    p.add_argument("--out", type=Path, help="output file (default: RESULTS/gpu/summary.md)")
    args = p.parse_args()
    results = Path(args.results)
    out = args.out or results / "gpu" / "summary.md"
    text = "\n".join(
        ["# GPU runs", "", "Regenerate: `python experiments/gpu_summary.py`.", ""]
        + decode_lines(results)
        + [""]
        + train_lines(results)
        + [""]
        + table_lines(results)
    )
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: tmp.write_text(text + "\n"))


if __name__ == "__main__":
    main()
