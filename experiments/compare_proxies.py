"""Do two proxies of the same latents pick the same orders?

For each pair of search runs on the same latents and model with two different proxies (a
Gaussian and a mixture proxy, a shipped and a converged one, ...), it compares the rankings of
the orders both runs scored: rank correlation of their proxy rates, the best order of each and
where it ranks under the other, what picking one's best costs under the other (regret), how
much of the top five they share, and the rates of the baselines under each.

    python experiments/compare_proxies.py --pair RUN_A RUN_B [--pair ...] --labels LABEL_A LABEL_B \
        --stem NAME [--title TITLE] [--out results]

`experiments/mixture_orders.py` is this comparison for Gaussian against mixture (K = 3) proxies.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from outputs import save_results
from scipy import stats

from orderopt import orders as od
from orderopt.results import BASELINES, Run
from orderopt.summary import gain_text

TOP = 5


def rate_of(run: Run, order: str) -> float | None:
    """Proxy bits per latent of ``order`` in ``run``: its candidate row, else from the run's cost
    table when the table holds every decoded set the order uses (None otherwise)."""
    rows = run.orders.set_index("order")
    if order in rows.index:
        return float(rows.loc[order, "proxy_bits_per_latent"])
    if run.table is None:
        return None
    o = od.DecodingOrder.parse(order)
    return run.table.bits_per_latent(o) if run.table.knows(o) else None


def regret_pct(run: Run, order: str) -> float | None:
    """How much ``order`` costs over ``run``'s best order, in percent of its rate."""
    rate = rate_of(run, order)
    best = float(run.orders["proxy_bits_per_latent"].iloc[0])
    return None if rate is None else 100 * (rate / best - 1)


def compare(run_a: Run, run_b: Run) -> dict:
    """The comparison of one pair of runs (same patch and model, two proxies)."""
    if run_a.patch != run_b.patch or run_a.manifest.get("model_hash") != run_b.manifest.get("model_hash"):
        raise SystemExit(f"error: {run_a.path} and {run_b.path} are not runs of the same patch and model")
    a = run_a.orders.set_index("order")
    b = run_b.orders.set_index("order")
    common = [o for o in a.index if o in b.index]
    ra, rb = a.loc[common, "proxy_bits_per_latent"], b.loc[common, "proxy_bits_per_latent"]
    best_a, best_b = a.index[0], b.index[0]
    rank_b = {o: i + 1 for i, o in enumerate(b.index)}
    rank_a = {o: i + 1 for i, o in enumerate(a.index)}
    base = {
        name: {
            "a_bits_per_latent": float(run_a.baseline(name)["proxy_bits_per_latent"]),
            "b_bits_per_latent": float(run_b.baseline(name)["proxy_bits_per_latent"]),
        }
        for name in BASELINES
    }
    for v in base.values():
        v["b_over_a_pct"] = 100 * (v["b_bits_per_latent"] / v["a_bits_per_latent"] - 1)
    return {
        "patch": run_a.patch,
        "runs": [str(run_a.path), str(run_b.path)],
        "proxies": [run_a.manifest.get("proxy", {}).get("hash"), run_b.manifest.get("proxy", {}).get("hash")],
        "mixture": [
            run_a.manifest.get("proxy", {}).get("mixture", 1),
            run_b.manifest.get("proxy", {}).get("mixture", 1),
        ],
        "orders_compared": len(common),
        "spearman": float(stats.spearmanr(ra, rb).statistic) if len(common) >= 3 else float("nan"),
        "kendall": float(stats.kendalltau(ra, rb).statistic) if len(common) >= 3 else float("nan"),
        "best_a": best_a,
        "best_b": best_b,
        "same_best": bool(best_a == best_b),
        "rank_of_best_a_under_b": rank_b.get(best_a),
        "rank_of_best_b_under_a": rank_a.get(best_b),
        # what picking one proxy's best costs under the other's rates (from its cost table when
        # the order is not among its candidates)
        "regret_under_b_of_best_a_pct": regret_pct(run_b, best_a),
        "regret_under_a_of_best_b_pct": regret_pct(run_a, best_b),
        "top_shared": len(set(a.index[:TOP]) & set(b.index[:TOP])),
        "best_a_gains": {x: gain_text(a.loc[best_a], x) for x in ("checkerboard", "autoregressive")},
        "best_b_gains": {x: gain_text(b.loc[best_b], x) for x in ("checkerboard", "autoregressive")},
        "b_orders_tied_with_best": int((~b["distinguishable_from_best"].astype(bool)).sum()),
        "baselines": base,
    }


def render(pairs: list[dict], labels: tuple[str, str], title: str, command: str) -> str:
    la, lb = labels
    lines = [
        f"| patch | orders | Spearman (Kendall) | best, {la} | best, {lb} | {la}'s best under {lb}: "
        f"rank, regret | {lb}'s best under {la}: rank, regret | top 5 shared |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def cell(rank, regret) -> str:
        where = "not a candidate" if rank is None else f"rank {rank}"
        return f"{where}, " + ("–" if regret is None else f"{regret:+.3f}%")

    for c in pairs:
        lines.append(
            f"| {c['patch']}×{c['patch']} | {c['orders_compared']} "
            f"| {c['spearman']:.3f} ({c['kendall']:.3f}) | `{c['best_a']}` | `{c['best_b']}` "
            f"| {cell(c['rank_of_best_a_under_b'], c['regret_under_b_of_best_a_pct'])} "
            f"| {cell(c['rank_of_best_b_under_a'], c['regret_under_a_of_best_b_pct'])} "
            f"| {c['top_shared']} of {TOP} |"
        )
    base_lines = [
        f"| patch | schedule | bits/latent, {la} | bits/latent, {lb} | {lb} against {la} |",
        "|---|---|---|---|---|",
    ]
    for c in pairs:
        for name, v in c["baselines"].items():
            base_lines.append(
                f"| {c['patch']}×{c['patch']} | {name} | {v['a_bits_per_latent']:.4f} | "
                f"{v['b_bits_per_latent']:.4f} | {v['b_over_a_pct']:+.2f}% |"
            )
    gains = [
        f"- {c['patch']}×{c['patch']}: the best order under {la} is "
        f"{c['best_a_gains']['checkerboard']} against checkerboard and "
        f"{c['best_a_gains']['autoregressive']} against autoregressive; under {lb}, "
        f"{c['best_b_gains']['checkerboard']} and {c['best_b_gains']['autoregressive']} "
        f"(each against its own proxy's baselines); under {lb}, {c['b_orders_tied_with_best']} orders "
        "cannot be told apart from the best."
        for c in pairs
    ]
    return (
        f"# {title}\n\n"
        "Proxy rates on each run's held-out latents (the runs' manifests name them). "
        f"Regenerate: `{command}`.\n\n"
        + "\n".join(lines)
        + f"\n\nThe baselines under each proxy ({lb} against {la}; one proxy's weights rate every row "
        "of its run):\n\n" + "\n".join(base_lines) + "\n\n" + "\n".join(gains) + "\n"
    )


def run(pairs_of_paths: list, labels: tuple[str, str], title: str, stem: str, out: str, command: str) -> str:
    """Compares every pair and writes ``out/stem.{json,md}``; returns the Markdown."""
    pairs = [compare(Run(a), Run(b)) for a, b in pairs_of_paths]
    text = render(pairs, labels, title, command)
    save_results({"pairs": pairs, "labels": list(labels), "top": TOP, "command": command}, text, out, stem)
    if any(not np.isfinite(c["spearman"]) for c in pairs):
        print("note: fewer than three common orders in a pair: no rank correlation")
    return text


def pair_option(p: argparse.ArgumentParser, help_: str) -> None:
    p.add_argument(
        "--pair", nargs=2, action="append", required=True, type=Path, metavar=("RUN_A", "RUN_B"), help=help_
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    pair_option(p, "two search runs of the same patch and model with different proxies (repeatable)")
    p.add_argument("--labels", nargs=2, default=["A", "B"], metavar=("LABEL_A", "LABEL_B"),
                   help="names of the two proxies in the tables (default: A B)")  # fmt: skip
    p.add_argument("--stem", default="compare_proxies", help="output file stem (default: compare_proxies)")
    p.add_argument("--title", default="Two proxies: do the same orders win?", help="the Markdown's title")
    p.add_argument("--out", default="results", help="output folder (default: results)")
    args = p.parse_args(argv)
    command = (
        "python experiments/compare_proxies.py "
        + " ".join(f"--pair {a} {b}" for a, b in args.pair)
        + " --labels " + " ".join(f"'{x}'" for x in args.labels)
        + f" --stem {args.stem}"
        + (f" --title '{args.title}'" if args.title != p.get_default("title") else "")
        + (f" --out {args.out}" if args.out != "results" else "")
    )  # fmt: skip
    print(run(args.pair, tuple(args.labels), args.title, args.stem, args.out, command))


if __name__ == "__main__":
    main()
