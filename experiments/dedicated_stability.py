"""Does the dedicated models' ranking still change with more training steps?

Reads a search run verified with ``--verify-curve N`` (every dedicated model's held-out rate
measured every N steps, and before training when fine-tuned from the proxy) and writes, per
curve step: Spearman's ρ between the ranking at that step and at the end (over all verified
candidates, and over the multistage orders alone), the order that step rates best and what it
costs at the end (regret), the best order's rate against autoregressive and checkerboard at that
step, and how far the rates still are from their final values. When the points before the end
already agree with it, the verdict has stopped moving within this budget; when only the last
one does, it has not been shown to, and the models need more steps (--verify-steps).

A final ranking is a converged one only while the held-out rates fall or hold: per model, the
lowest point of its curve and how far the final rate rose above it, and (where the run recorded
it) the training crops' rate over the first and last intervals, which tells overfitting
(training rate falls while the held-out one rises) from a drift of both. When the rates rise,
the ranking at each model's lowest point (early stopping) is given as well; picking that point
on the measuring images favours every model alike, but is optimistic in absolute terms.

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

from orderopt.context import dedicated
from orderopt.errors import UserError
from orderopt.results import BASELINES, Run
from orderopt.verify import dedicated_spec

RISE_PERCENT = 0.1  # a final rate this far above the curve's lowest: the fine-tuning lost rate


def train_curves(run: Run) -> dict[str, dict[int, float]]:
    """Each dedicated model's mean training-crop rate over the interval ending at each step
    (runs made before it was recorded have none)."""
    out = {}
    for name, rec in (run.manifest.get("dedicated") or {}).items():
        points = [p for p in rec.get("held_out_curve") or [] if "train_bits_per_latent" in p]
        if points:
            out[name] = {int(p["step"]): float(p["train_bits_per_latent"]) for p in points}
    return out


def parameters(run: Run, names: list[str]) -> dict[str, int]:
    """Each dedicated model's parameter count (built untrained from the run's channel counts):
    the larger a model, the faster it can fit the training latents."""
    proxy = run.manifest.get("proxy") or {}
    m, c = proxy.get("latent_channels"), proxy.get("hyper_channels")
    if not (m and c):
        return {}
    k = int(proxy.get("mixture", 1))
    return {n: sum(p.numel() for p in dedicated(dedicated_spec(n), m, c, k).parameters()) for n in names}


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
    lowest = {n: min(steps, key=lambda s, c=c: (c[s], s)) for n, c in by_name.items()}
    rises = {n: relative(final[n], by_name[n][lowest[n]]) for n in by_name}
    early = {n: by_name[n][lowest[n]] for n in by_name}
    early_best = min(order_names, key=early.get)
    early_stopped = {"best_order": early_best, "rates": early}
    for base in ("autoregressive", "checkerboard"):
        if base in early:
            early_stopped[f"best_vs_{base}_percent"] = relative(early[early_best], early[base])
    return {
        "steps": steps,
        "final_step": last,
        "lowest_step": lowest,
        "rise_to_final_percent": rises,
        # the fine-tuning lost held-out rate: the final ranking is not a converged one
        "rates_rose": statistics.median(rises.values()) > RISE_PERCENT,
        "early_stopped": early_stopped,
        "final": final,
        "final_best_order": final_best,
        # the last step agrees with itself by construction: settled only when an earlier one does
        "orders_settled_step": settled if settled is not None and settled < last else None,
        "n_all": len(final),
        "n_orders": len(order_names),
        "rows": rows,
    }


def render(
    run: Run,
    result: dict,
    command: str,
    figure: str,
    train: dict[str, dict[int, float]] | None = None,
    params: dict[str, int] | None = None,
) -> str:
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
        *drift_lines(result, train or {}, params or {}),
        "",
        f"![stability]({figure})",
    ]
    return "\n".join(lines) + "\n"


def drift_lines(result: dict, train: dict[str, dict[int, float]], params: dict[str, int]) -> list[str]:
    """Per model: the final rate, the curve's lowest and how far the final rose above it, and the
    training crops' rate over the first and last intervals; then the verdict on the drift."""
    steps, lowest, rises = result["steps"], result["lowest_step"], result["rise_to_final_percent"]
    has_train = bool(train)
    header = "| model | parameters | final rate (bits/latent) | lowest (step) | final vs lowest |"
    rule = "|---|---|---|---|---|"
    if has_train:
        header += " training crops' rate, first → last interval |"
        rule += "---|"
    lines = [header, rule]
    for n, v in sorted(result["final"].items(), key=lambda kv: kv[1]):
        low = result["early_stopped"]["rates"][n]
        size = f"{params[n] / 1e6:.2f} M" if n in params else "–"
        row = f"| {n} | {size} | {v:.5f} | {low:.5f} ({lowest[n]}) | {rises[n]:+.2f}% |"
        if has_train:
            t = train.get(n, {})
            ts = [s for s in steps if s in t]
            row += f" {t[ts[0]]:.4f} → {t[ts[-1]]:.4f} |" if len(ts) >= 2 else " – |"
        lines.append(row)
    lines.append("")
    early = result["early_stopped"]
    if not result["rates_rose"]:
        lines.append(
            f"The held-out rates fall or hold to the end (median rise above the lowest ≤ {RISE_PERCENT}%): "
            "the final ranking is the trained models' ranking."
        )
        return lines
    vs = "; ".join(
        f"{early[f'best_vs_{b}_percent']:+.2f}% against {b}"
        for b in ("autoregressive", "checkerboard")
        if f"best_vs_{b}_percent" in early
    )
    lines.append(
        f"**The held-out rates rise with more steps** (median final rate "
        f"{statistics.median(rises.values()):+.2f}% above each model's lowest): this fine-tuning loses "
        "rate on unseen images, so the final ranking measures how fast each model drifts, not a "
        "converged model. "
        + (
            "Its training crops' rate falls meanwhile: the models overfit the training latents. "
            if has_train and all(overfits(train[n], steps) for n in train if rises.get(n, 0) > RISE_PERCENT)
            else ""
        )
        + f"Each model at its lowest point (early stopping, chosen on these same images): best order "
        f"`{early['best_order']}`, {vs}."
    )
    return lines


def overfits(train: dict[int, float], steps: list[int]) -> bool:
    """The training crops' rate of the last interval below that of the first."""
    ts = [s for s in steps if s in train]
    return len(ts) >= 2 and train[ts[-1]] < train[ts[0]]


def plot(by_name: dict[str, dict[int, float]], result: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    for name, c in sorted(by_name.items()):
        steps = result["steps"]
        ax.plot(steps, [c[s] for s in steps], marker=".", label=name)
    ax.set_xlabel("dedicated training steps")
    ax.set_ylabel("held-out rate (bits/latent)")
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
    params = parameters(run, sorted(by_name))
    text = render(run, result, command, f"{args.out.name}.png", train_curves(run), params)
    record = {"run": str(args.run), "command": command, **result, "parameters": params}
    save_results(record, text, args.out.parent, args.out.name)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
