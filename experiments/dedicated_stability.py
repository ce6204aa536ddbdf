"""Does the dedicated models' ranking still change with more training steps?

Reads a search run verified with ``--verify-curve N`` (every dedicated model's held-out rate
measured every N steps, and before training when fine-tuned from the proxy) and writes, per
curve step: Spearman's ρ between the ranking at that step and at the end (over all verified
candidates, and over the multistage orders alone), the order that step rates best and what it
costs at the end (regret), the best order's rate against autoregressive and checkerboard at that
step, and how far the rates still are from their final values. When the points before the end
already agree with it, the verdict has stopped moving within this budget; when only the last
one does, it has not been shown to, and the models need more steps (--verify-steps).

    python experiments/dedicated_stability.py results/search-patch2-verify-curve \
        --out results/dedicated_stability_patch2
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from converge_summary import ranking_over_training, settled_step
from outputs import save_results
from scipy.stats import spearmanr

from orderopt.errors import UserError
from orderopt.results import BASELINES, Run


def curves(run: Run) -> dict[str, dict[int, float]]:
    """Each dedicated model's held-out rate by step (step 0: before training, when known)."""
    dedicated = run.manifest.get("dedicated") or {}
    missing = sorted(n for n, rec in dedicated.items() if not rec.get("held_out_curve"))
    if not dedicated or missing:
        which = f" ({', '.join(missing)} have none)" if dedicated else ""
        raise UserError(
            f"{run.path} lacks dedicated models with a held-out curve{which}; run its search with "
            "--verify N --verify-curve STEPS"
        )
    out = {}
    for name, rec in dedicated.items():
        c = {int(p["step"]): float(p["bits_per_latent"]) for p in rec["held_out_curve"]}
        if rec.get("start_bits_per_latent") is not None:
            c[0] = float(rec["start_bits_per_latent"])
        out[name] = c
    return out


def relative(a: float, b: float) -> float:
    return 100 * (a / b - 1)


def stability(by_name: dict[str, dict[int, float]], proxy: dict[str, float] | None = None) -> dict:
    """Per step common to every model: the ranking against the end, the pick and the gains;
    with ``proxy`` (the proxy's rate of each model's order), the ranking against the proxy's."""
    steps = sorted(set.intersection(*(set(c) for c in by_name.values())))
    order_names = [n for n in by_name if n not in BASELINES]
    if len(steps) < 2:
        raise UserError(
            "the dedicated models' curves share fewer than two steps (records of different "
            "--verify-curve or --verify-steps in one --dedicated-dir?); rerun the search with one"
        )
    if len(order_names) < 2:
        raise UserError("the run verified fewer than two multistage orders; give --verify 2 or more")
    last = steps[-1]
    final = {n: c[last] for n, c in by_name.items()}
    points = [{"step": s, "orders": {n: c[s] for n, c in by_name.items()}} for s in steps]
    rows_all = ranking_over_training(points, final)
    final_orders = {n: final[n] for n in order_names}
    order_points = [{"step": p["step"], "orders": {n: p["orders"][n] for n in order_names}} for p in points]
    rows_orders = ranking_over_training(order_points, final_orders)
    final_best = min(final_orders, key=final_orders.get)
    settled = settled_step(rows_orders, final_best)
    rows = []
    for p, ra, ro in zip(points, rows_all, rows_orders, strict=True):
        rates = p["orders"]
        row = {
            "step": p["step"],
            "spearman_all": ra["spearman"],
            "spearman_orders": ro["spearman"],
            "best_order": ro["best"],
            "regret_percent": ro["regret_percent"],
            "median_abs_change_to_final_percent": statistics.median(
                abs(relative(rates[n], final[n])) for n in rates
            ),
        }
        rated = sorted(n for n in rates if math.isfinite((proxy or {}).get(n, math.nan)))
        if len(rated) >= 3:
            row["spearman_proxy"] = float(
                spearmanr([rates[n] for n in rated], [proxy[n] for n in rated]).statistic
            )
        for base in ("autoregressive", "checkerboard"):
            if base in rates:
                row[f"best_vs_{base}_percent"] = relative(rates[ro["best"]], rates[base])
        rows.append(row)
    return {
        "steps": steps,
        "final_step": last,
        "final": final,
        "final_best_order": final_best,
        # the last step agrees with itself by construction: settled only when an earlier one does
        "orders_settled_step": settled if settled is not None and settled < last else None,
        "n_all": len(final),
        "n_orders": len(order_names),
        "rows": rows,
    }


def render(run: Run, result: dict, command: str, figure: str) -> str:
    steps = result["steps"]
    start = " (step 0: the proxy's weights restricted to each model's masks)" if steps[0] == 0 else ""
    lines = [
        "# Do the dedicated models' rankings still change with more steps?",
        "",
        f"Regenerate: `{command}`",
        "",
        f"Run `{run.path}`: {run.label}; dedicated models {run.verify_protocol()}, held-out rate "
        f"measured at steps {', '.join(map(str, steps))}{start}. The learning rate drops ÷10 for "
        "the last 20% of the steps.",
        "",
        f"ρ: Spearman between a step's rates and the final ones, over all {result['n_all']} verified "
        f"models (baselines included) and over the {result['n_orders']} multistage orders; best: the "
        "order that step rates lowest, and its regret under the final rates (its final rate over the "
        "final best order's); Δ to final: the median over models of |step / final − 1|; ρ proxy: "
        "Spearman between a step's rates and the proxy's (the search's ranking), over the models the "
        "proxy rates.",
        "",
        "| step | ρ all | ρ orders | ρ proxy | best order | regret | best vs autoregressive | "
        "best vs checkerboard | median Δ to final |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{v:+.2f}%"

    for r in result["rows"]:
        rho_proxy = f"{r['spearman_proxy']:.3f}" if "spearman_proxy" in r else "–"
        lines.append(
            f"| {r['step']} | {r['spearman_all']:.3f} | {r['spearman_orders']:.3f} | {rho_proxy} | "
            f"`{r['best_order']}` | {r['regret_percent']:.3f}% | "
            f"{pct(r.get('best_vs_autoregressive_percent'))} | "
            f"{pct(r.get('best_vs_checkerboard_percent'))} | "
            f"{r['median_abs_change_to_final_percent']:.3f}% |"
        )
    settled = result["orders_settled_step"]
    lines += [
        "",
        f"Final best order `{result['final_best_order']}`; "
        + (
            f"every step from {settled} on picks it with ρ(orders) ≥ 0.9."
            if settled is not None
            else "the steps before the last pick another order or rank with ρ(orders) < 0.9: the "
            "ranking has not been shown to settle; train longer (--verify-steps)."
        ),
        "",
        "| model | final rate (bits/latent) |",
        "|---|---|",
        *(f"| {n} | {v:.5f} |" for n, v in sorted(result["final"].items(), key=lambda kv: kv[1])),
        "",
        f"![stability]({figure})",
    ]
    return "\n".join(lines) + "\n"


def plot(by_name: dict[str, dict[int, float]], result: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    for name, c in sorted(by_name.items()):
        steps = result["steps"]
        ax.plot(steps, [relative(c[s], result["final"][name]) for s in steps], marker=".", label=name)
    ax.set_xlabel("dedicated training steps")
    ax.set_ylabel("held-out rate vs final (%)")
    ax.set_title("each dedicated model")
    ax.legend(fontsize=6)
    ax = axes[1]
    steps = [r["step"] for r in result["rows"]]
    ax.plot(steps, [r["spearman_all"] for r in result["rows"]], marker=".", label="all models")
    ax.plot(steps, [r["spearman_orders"] for r in result["rows"]], marker=".", label="multistage orders")
    ax.set_xlabel("dedicated training steps")
    ax.set_ylabel("Spearman ρ with the final ranking")
    ax.set_title("ranking")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a search run made with --verify N --verify-curve STEPS")
    ap.add_argument(
        "--out",
        type=Path,
        default=Path("results/dedicated_stability"),
        help="output stem: STEM.md, STEM.json, STEM.png (default: results/dedicated_stability)",
    )
    args = ap.parse_args(argv)
    try:
        run = Run(args.run)
        by_name = curves(run)
        proxy = dict(zip(run.df["order"], run.df["proxy_bits_per_latent"], strict=True))
        result = stability(by_name, proxy)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    command = f"python experiments/dedicated_stability.py {args.run} --out {args.out}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(by_name, result, args.out.with_suffix(".png"))
    text = render(run, result, command, f"{args.out.name}.png")
    save_results({"run": str(args.run), "command": command, **result}, text, args.out.parent, args.out.name)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
