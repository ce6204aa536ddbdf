"""How reproducible is the dedicated ranking itself? Compares verified search runs of one
base model that differ in the dedicated models' training: ``--seed`` (batches and crops) or
the protocol (``--verify-init proxy`` or ``scratch``).

The proxy cannot rank candidates better than the dedicated rates rank themselves from one
training to the next, so this is the ceiling against which the proxy's Spearman is read.
For each candidate verified in every run: the dedicated rate per run, the mean and the
spread (max − min); then Spearman between the runs' rankings, and of the proxy against the
mean over runs and against each run, over all candidates and over the multistage orders
alone.

    python experiments/dedicated_spread.py results/search-patch2-from-proxy \
        results/search-patch2 --out results/dedicated_spread_patch2
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import pandas as pd
from scipy import stats

from orderopt.files import atomic_write, write_json
from orderopt.report import Run

RATE = "dedicated_bits_per_latent"


def load(path: Path) -> tuple[pd.DataFrame, str, str]:
    """A run's verified candidates, its name (folder, verify seed, dedicated init) and model hash."""
    run = Run(path)  # the report's checks: a finished, well-formed search run
    man = run.manifest
    init = next(iter(man.get("dedicated", {}).values()), {}).get("init", "scratch").split(":")[0]
    name = f"{path.name} (seed {man['seeds']['verify']}, {init})"
    return run.df.dropna(subset=[RATE]).set_index("order"), name, man["model_hash"]


def spread_table(runs: list[tuple[pd.DataFrame, str, str]]) -> pd.DataFrame:
    """One row per candidate verified in every run: proxy, rate per run, mean, spread."""
    names = [name for _, name, _ in runs]
    if len(set(names)) < len(names):
        raise SystemExit("error: two runs have the same name; give distinct run directories")
    common = sorted(set.intersection(*(set(df.index) for df, _, _ in runs)))
    first = runs[0][0].loc[common]
    out = pd.DataFrame({"source": first["source"], "proxy_bits_per_latent": first["proxy_bits_per_latent"]})
    for df, name, _ in runs:
        out[name] = df.loc[common, RATE]
    out["mean"] = out[names].mean(axis=1)
    out["spread"] = out[names].max(axis=1) - out[names].min(axis=1)
    return out.sort_values("mean")


def correlations(table: pd.DataFrame) -> dict:
    seeds = [c for c in table.columns if c not in ("source", "proxy_bits_per_latent", "mean", "spread")]

    def rho(d: pd.DataFrame, a: str, b: str) -> float:
        d = d.dropna(subset=[a, b])
        return float(stats.spearmanr(d[a], d[b]).statistic) if len(d) >= 3 else float("nan")

    orders = table[table["source"] != "baseline"]
    result = {}
    for name, d in (("all", table), ("orders_only", orders)):
        result[name] = {
            "n": int(len(d)),
            "run_vs_run": {f"{a} ~ {b}": rho(d, a, b) for a, b in itertools.combinations(seeds, 2)},
            "proxy_vs_mean": rho(d, "proxy_bits_per_latent", "mean"),
            "proxy_vs_run": {s: rho(d, "proxy_bits_per_latent", s) for s in seeds},
        }
    columns = ["proxy_bits_per_latent", *seeds]
    result["orders_range"] = {c: float(orders[c].max() - orders[c].min()) for c in columns}
    result["orders_range_of_mean"] = float(orders["mean"].max() - orders["mean"].min())
    result["median_run_spread"] = float(orders["spread"].median())
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "runs",
        nargs="+",
        type=Path,
        help="verified run directories of one base model, differing in --seed or --verify-init",
    )
    p.add_argument("--out", type=Path, default=Path("results/dedicated_spread"), help="output stem")
    args = p.parse_args()
    if len(args.runs) < 2:
        p.error("give at least two run directories")
    runs = [load(r) for r in args.runs]
    hashes = {h for _, _, h in runs}
    if len(hashes) > 1:
        p.error(f"the runs come from different base models ({', '.join(sorted(hashes))})")
    table = spread_table(runs)
    corr = correlations(table)
    cmd = "python experiments/dedicated_spread.py " + " ".join(map(str, args.runs)) + f" --out {args.out}"
    rows = table.reset_index().to_dict("records")
    payload = {"runs": [str(r) for r in args.runs], "command": cmd, **corr, "table": rows}
    write_json(payload, args.out.with_suffix(".json"))
    lines = [f"# Dedicated rates across trainings (bits per latent)\n\nRegenerate: `{cmd}`\n"]
    cols = list(table.columns)
    lines.append("| order | " + " | ".join(cols) + " |")
    lines.append("|---" * (len(cols) + 1) + "|")
    for order, row in table.iterrows():
        cells = [f"{v:.5f}" if isinstance(v, float) else str(v) for v in row]
        lines.append(f"| {order} | " + " | ".join(cells) + " |")
    lines.append(
        f"\nMultistage orders: range of the mean rates {corr['orders_range_of_mean']:.5f} bits/latent, "
        f"median spread between runs {corr['median_run_spread']:.5f}. Range over the orders: "
        + ", ".join(f"{k} {v:.5f}" for k, v in corr["orders_range"].items())
        + ".\n"
    )
    for name in ("all", "orders_only"):
        c = corr[name]
        pairs = ", ".join(f"{k}: {v:.2f}" for k, v in c["run_vs_run"].items())
        lines.append(
            f"- {name} (n={c['n']}): Spearman between runs {pairs}; proxy against the mean over "
            f"runs {c['proxy_vs_mean']:.2f}; proxy against each run "
            + ", ".join(f"{k}: {v:.2f}" for k, v in c["proxy_vs_run"].items())
        )
    text = "\n".join(lines) + "\n"
    atomic_write(args.out.with_suffix(".md"), lambda tmp: tmp.write_text(text))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
