"""The README's orders table: for each search run, autoregressive, hyperprior-only, the best
order and the paper's order against checkerboard and autoregressive, with 95% intervals, and
how many orders cannot be told apart from the best. Writes results/one_basis_summary.md.

    python experiments/one_basis_summary.py results/search-patch2 results/search-patch4 ...
"""

from __future__ import annotations

import argparse
from pathlib import Path

from orderopt.files import atomic_write
from orderopt.results import Run
from orderopt.summary import gain_text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="search run directories")
    p.add_argument("--out", type=Path, default=Path("results/one_basis_summary.md"), help="output file")
    args = p.parse_args()
    lines = [
        "| held out | patch | row | stages | vs checkerboard [95% CI] | vs autoregressive [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    notes = []
    for path in args.runs:
        run = Run(path)
        n = run.manifest["latents"]["images"]
        where = f"{'embedded' if 'embedded' in run.held_out else Path(run.held_out).name} ({n})"
        best = run.orders.iloc[0]
        paper = " (the paper's)" if run.paper() == best["order"] else ""
        rows = [(f"best `{best['order']}`{paper}", best)]
        if run.paper() and run.paper() != best["order"] and run.paper() in set(run.orders["order"]):
            rows.append(("paper's", run.orders[run.orders["order"] == run.paper()].iloc[0]))
        rows += [(b, run.baseline(b)) for b in ("autoregressive", "hyperprior")]
        for name, r in rows:
            lines.append(
                f"| {where} | {run.patch}×{run.patch} | {name} | {r['stages']} | "
                f"{gain_text(r, 'checkerboard')} | {gain_text(r, 'autoregressive')} |"
            )
        tied = int((~run.orders["distinguishable_from_best"].astype(bool)).sum())
        k = f"{run.patch}×{run.patch}"
        notes.append(f"- {where}, {k}: {tied} of {len(run.orders)} orders are not told apart from the best.")
    cmd = "python experiments/one_basis_summary.py " + " ".join(map(str, args.runs))
    text = "\n".join([f"Regenerate: `{cmd}`", "", *lines, "", *notes]) + "\n"
    atomic_write(args.out, lambda tmp: tmp.write_text(text))
    print(text)


if __name__ == "__main__":
    main()
