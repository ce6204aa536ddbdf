"""Did the context models converge, and does more training still change the orders' ranking?

Reads the records of ``train context --converge`` runs (``experiments/converge_context.sh``:
``results/context/converge/qQ_NAME.json``, each with ``held_out_curve`` and ``convergence``) and
writes, per model: the held-out rate of its starting weights (step 0), its lowest and where,
the learning-rate drops, and whether the plateau rule stopped it. For 2×2 proxies, whose every
curve point rates all 24 orders, it also shows how the ranking moves with training: Spearman's ρ
between each point's ranking and the ranking of the weights the run ends with, the order each
point would have picked, and what that order costs under the final weights (its regret).

    python experiments/converge_summary.py [--dir results/context/converge] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from outputs import save_results
from scipy.stats import spearmanr


def ranking_over_training(curve: list[dict], final: dict[str, float]) -> list[dict]:
    """Per curve point with every order's rate: ρ with the final rates, the point's best order
    and its regret (its final rate over the final best, in percent)."""
    names = sorted(final)
    best_final = min(final.values())
    rows = []
    for p in curve:
        if "orders" not in p:
            continue
        rates = p["orders"]
        rho = float(spearmanr([rates[n] for n in names], [final[n] for n in names]).statistic)
        pick = min(rates, key=rates.get)
        regret = 100 * (final[pick] / best_final - 1)
        rows.append({"step": p["step"], "spearman": rho, "best": pick, "regret_percent": regret})
    return rows


def settled_step(rows: list[dict], final_best: str, rho: float = 0.9) -> int | None:
    """The step from which on every row of :func:`ranking_over_training` picks ``final_best``
    with Spearman ≥ ``rho`` (None when the last row does not)."""
    settled = None
    for r in reversed(rows):
        if r["best"] != final_best or not r["spearman"] >= rho:  # a NaN ρ (ties) is not settled
            break
        settled = r["step"]
    return settled


def init_label(init: dict | None) -> str | None:
    """Where a run started: its ``--init``, and, for a snapshot of an earlier run, how far that
    run had gone and from where."""
    if not init:
        return None
    label = init["from"]
    if init.get("steps_done"):
        first = init.get("init") or {}
        label += f" (a run of {init['steps_done']:,} steps from {first.get('from', 'random weights')}"
        if "bits_per_latent" in first:
            label += f", which rates {first['bits_per_latent']:.4f}"
        label += ")"
    return label


def summarise(record: dict) -> dict:
    """One model's convergence: start, lowest, drops, last improvement, ranking stability."""
    curve, conv = record["held_out_curve"], record["convergence"]
    values = [p["bits_per_latent"] for p in curve]
    start = values[0]
    lowest_point = next(p for p in curve if p["step"] == conv["lowest_step"])
    improved = [p["step"] for p in curve if p.get("event") == "improved"]
    out = {
        "kind": record["kind"],
        "patch": record.get("patch"),
        "init": init_label(record.get("init")),
        "start": start,
        "lowest": conv["lowest"],
        "lowest_step": conv["lowest_step"],
        "change_percent": 100 * (conv["lowest"] / start - 1),
        "last_improvement_step": improved[-1] if improved else 0,
        "drops_at": [p["step"] for p in curve if p.get("event") == "drop"],
        "steps_run": conv["steps_run"],
        "converged": conv["converged"],
        "rule": {
            **{k: conv[k] for k in ("patience", "min_delta", "drops", "factor")},
            # records of the first version lack "every": the curve's spacing after step 0 says it
            "every": conv.get("every") or (curve[1]["step"] - curve[0]["step"] if len(curve) > 1 else None),
        },
        "steps": [p["step"] for p in curve],
        "values": values,
    }
    if "orders" in lowest_point:
        rows = ranking_over_training(curve, lowest_point["orders"])
        out["ranking"] = rows
        final_best = min(lowest_point["orders"], key=lowest_point["orders"].get)
        out["final_best"] = final_best
        out["ranking_settled_step"] = settled_step(rows, final_best)
    return out


def render(summaries: dict[str, dict], command: str) -> str:
    lines = [
        "# Context models trained until their held-out rate stopped improving",
        "",
        f"Regenerate: `{command}` (records from `bash experiments/converge_context.sh Q`, which holds "
        "out BSDS500 val: 100 photographs of the training domain that no search rates).",
        "Each run follows `train context --converge` from its starting weights (step 0; `init`): the "
        "learning rate drops ÷10 after `patience` held-out points (every `every` steps) without an "
        "improvement of more than `min_delta`, and after `drops` drops the same wait stops training, "
        "keeping the weights of the lowest held-out rate. A proxy's rate is the mean of its raster "
        "order's and, if trained with it, its autoregressive mask's.",
        "",
        "| model | from | rule (patience, min_delta, drops, every) | start (bits/latent) | lowest | change | "
        "at step | last improvement | lr drops at | steps run | stopped by the rule |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, s in summaries.items():
        drops = ", ".join(str(d) for d in s["drops_at"]) or "–"
        r = s["rule"]
        lines.append(
            f"| {key} | {s['init'] or 'random weights'} | "
            f"{r['patience']}, {r['min_delta']:g}, {r['drops']}, {r['every']} | "
            f"{s['start']:.4f} | {s['lowest']:.4f} | {s['change_percent']:+.2f}% | "
            f"{s['lowest_step']} | {s['last_improvement_step']} | {drops} | {s['steps_run']} | "
            f"{'yes' if s['converged'] else 'no (step cap or still running)'} |"
        )
    ranked = {k: s for k, s in summaries.items() if "ranking" in s}
    if ranked:
        lines += [
            "",
            "## How the 2×2 orders' ranking moves with training",
            "",
            "ρ: Spearman's rank correlation of a point's rates of the 24 orders with those of the "
            "lowest point's weights (what a converged run ends with); regret: what the order that "
            "point rates best costs under those weights, over their best.",
            "",
        ]
        for key, s in ranked.items():
            lines += [
                f"### {key}",
                "",
                f"Final best order `{s['final_best']}`; every point from step "
                f"{s['ranking_settled_step']} on picks it with ρ ≥ 0.9."
                if s["ranking_settled_step"] is not None
                else f"Final best order `{s['final_best']}`; the last point's pick or ranking still differs.",
                "",
                "| step | ρ with the final ranking | best order | regret |",
                "|---|---|---|---|",
            ]
            lines += [
                f"| {r['step']} | {r['spearman']:.3f} | `{r['best']}` | {r['regret_percent']:.3f}% |"
                for r in s["ranking"]
            ]
            lines.append("")
    lines += ["", "![curves](converge_summary.png)"]
    return "\n".join(lines) + "\n"


def plot(summaries: dict[str, dict], path: Path) -> None:
    ranked = [k for k, s in summaries.items() if "ranking" in s]
    fig, axes = plt.subplots(1, 2 if ranked else 1, figsize=(11 if ranked else 6, 4), squeeze=False)
    ax = axes[0][0]
    for key, s in summaries.items():
        rel = [100 * (v / s["start"] - 1) for v in s["values"]]
        (line,) = ax.plot(s["steps"], rel, label=key)
        for d in s["drops_at"]:
            ax.axvline(d, color=line.get_color(), ls=":", lw=0.8)
    ax.set_xlabel("steps from the shipped weights")
    ax.set_ylabel("held-out rate vs step 0 (%)")
    ax.set_title("held-out rate (dotted: learning-rate drops)")
    ax.legend(fontsize=7)
    if ranked:
        ax = axes[0][1]
        for key in ranked:
            r = summaries[key]["ranking"]
            ax.plot([p["step"] for p in r], [p["spearman"] for p in r], marker=".", label=key)
        ax.set_xlabel("steps from the shipped weights")
        ax.set_ylabel("Spearman ρ with the final ranking")
        ax.set_title("2×2 orders' ranking")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--dir",
        default="results/context/converge",
        help="folder of qQ_NAME.json records (default: results/context/converge)",
    )
    ap.add_argument("--out", help="output folder (default: --dir)")
    args = ap.parse_args(argv)
    folder = Path(args.dir)
    records = sorted(p for p in folder.glob("q*_*.json") if not p.name.startswith("converge_summary"))
    summaries = {}
    for p in records:
        record = json.loads(p.read_text())
        if "convergence" in record and record.get("held_out_curve"):
            summaries[p.stem] = summarise(record)
    if not summaries:
        print(
            f"no --converge records in {folder}: run experiments/converge_context.sh first", file=sys.stderr
        )
        return 2
    out = Path(args.out or folder)
    out.mkdir(parents=True, exist_ok=True)
    command = "python experiments/converge_summary.py" + "".join(
        f" {flag} {value}" for flag, value in (("--dir", args.dir), ("--out", args.out)) if value
    )
    plot(summaries, out / "converge_summary.png")
    save_results(
        {"command": command, "models": summaries}, render(summaries, command), out, "converge_summary"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
