"""Figures and a summary of search runs: ``python -m orderopt.report [RUN_DIR ...]``.

Without arguments it reports the most recent finished run under ``runs/``. With several run
directories (patch 2 against 4, or two models) they are shown side by side. Writes into
the first run directory (or ``--out``): ``report.md`` and the PNG figures it embeds.

- ``gains.png``: rate gain of every candidate against checkerboard and autoregressive;
- ``orders.png``: best, worst and the paper's order as k×k grids of stage numbers;
- ``stages.png``: bits spent at each stage by the best order and by raster;
- ``proxy_vs_dedicated.png``: proxy against dedicated rates with rank correlations;
- ``tradeoff.png``: rate against serial decoding stages (the rate/latency trade-off), with
  the exact frontier (the best schedule within every stage budget) where the run has one;
- ``random.png`` (k ≥ 3): the distribution of the rates of random orders;
- ``decode_time.png`` (with ``--decode-time``): rate against measured ŷ decoding time, one
  panel per benchmark file (CPU and GPU, say).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from .errors import HelpFormatter, OneLineErrorParser, UserError, run_cli
from .figures import (
    fig_decode_time,
    fig_gains,
    fig_orders,
    fig_proxy_vs_dedicated,
    fig_random,
    fig_stages,
    fig_tradeoff,
    load_decode_time,
)
from .files import atomic_write
from .results import Run
from .summary import frontier_rows, summary_rows


def latest_run(root: Path = Path("runs")) -> Path:
    runs = [p.parent for p in root.glob("*/manifest.json")] if root.is_dir() else []
    if not runs:
        raise UserError(
            f"no search runs under {root}/; run `python -m orderopt.search --patch 2` first "
            "or name a run directory"
        )
    return max(runs, key=lambda p: (p / "manifest.json").stat().st_mtime)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog="python -m orderopt.report",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    p.add_argument("runs", nargs="*", help="run directories (default: the latest finished run under runs/)")
    p.add_argument("--out", help="folder for report.md and figures (default: the first run directory)")
    p.add_argument(
        "--decode-time",
        nargs="+",
        help="decode_time*.json of experiments/bench_decode.py (several: one panel each, e.g. CPU "
        "and GPU): adds rate against measured decoding time (default: none)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runs = [Run(p) for p in (args.runs or [latest_run()])]
    timings = [load_decode_time(p, runs) for p in args.decode_time or []]
    out = Path(args.out) if args.out else runs[0].path
    out.mkdir(parents=True, exist_ok=True)
    fig_gains(runs, out / "gains.png")
    fig_orders(runs, out / "orders.png")
    fig_tradeoff(runs, out / "tradeoff.png")
    figures = [
        ("Rate against decoding latency", "tradeoff.png"),
        ("Rate gains", "gains.png"),
        ("Orders", "orders.png"),
    ]
    if fig_stages(runs, out / "stages.png"):
        figures.append(("Bits per stage", "stages.png"))
    if fig_proxy_vs_dedicated(runs, out / "proxy_vs_dedicated.png"):
        figures.append(("Proxy against dedicated", "proxy_vs_dedicated.png"))
    if fig_random(runs, out / "random.png"):
        figures.append(("Random orders", "random.png"))
    if timings:
        fig_decode_time(runs, timings, out / "decode_time.png")
        figures.insert(1, ("Rate against measured decoding time", "decode_time.png"))
    lines = [
        "# orderopt report",
        "",
        "Regenerate: `python -m orderopt.report "
        + " ".join(str(r.path) for r in runs)
        + (f" --out {args.out}" if args.out else "")
        + (" --decode-time " + " ".join(args.decode_time) if args.decode_time else "")
        + "`.",
        "",
    ]
    for run in runs:
        lines += summary_rows(run)
        lines += frontier_rows(run)
    for title, fname in figures:
        lines += [f"## {title}", "", f"![{title}]({fname})", ""]
    atomic_write(out / "report.md", lambda tmp: tmp.write_text("\n".join(lines)))
    print(f"wrote {out / 'report.md'} with {len(figures)} figures")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
