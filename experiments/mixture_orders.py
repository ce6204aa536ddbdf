"""Does a Gaussian-mixture context model (K = 3, as in the paper) change which orders win?

For each pair of search runs on the same latents, one with a Gaussian proxy (K = 1) and one
with a mixture proxy (K = 3): :mod:`compare_proxies`'s comparison (rank correlation, each best
order under the other, regrets, the baselines: what the mixture itself saves). Writes
results/mixture_orders.{json,md}.

    python experiments/mixture_orders.py --pair results/search-patch2 results/search-patch2-mix3 \\
        --pair results/search-patch4 results/search-patch4-mix3
"""

from __future__ import annotations

import argparse

from compare_proxies import pair_option, run


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    pair_option(
        p, "two search runs of the same patch and latents, with a K = 1 and a K = 3 proxy (repeatable)"
    )
    p.add_argument("--out", default="results", help="output folder (default: results)")
    args = p.parse_args(argv)
    command = "python experiments/mixture_orders.py " + " ".join(f"--pair {g} {m}" for g, m in args.pair)
    command += f" --out {args.out}" if args.out != "results" else ""
    title = "Gaussian against mixture (K = 3) proxies: do the same orders win?"
    print(run(args.pair, ("K = 1", "K = 3"), title, "mixture_orders", args.out, command))


if __name__ == "__main__":
    main()
