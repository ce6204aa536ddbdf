"""The report's Markdown: per run, the headline rows with their intervals, the orders that
cannot be told apart from the best, symmetry classes, rank correlations and the frontier."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import orders as od
from .results import BASELINES, Bootstrap, Run, class_comparison


def fmt(v: float, spec: str = "+.2f", unit: str = "") -> str:
    return "–" if v is None or not np.isfinite(v) else format(v, spec) + unit


def gain_text(r: pd.Series, base: str) -> str:
    """``-0.31% [-0.52, -0.10]``: a gain and its interval, or – where there is none."""
    g = r[f"gain_vs_{base}_pct"]
    lo, hi = r[f"gain_vs_{base}_ci_low"], r[f"gain_vs_{base}_ci_high"]
    return fmt(g, "+.2f", "%") + (f" [{lo:+.2f}, {hi:+.2f}]" if np.isfinite(lo) else "")


def run_bootstrap(run: Run) -> Bootstrap:
    b = run.manifest.get("bootstrap", {})
    return Bootstrap(int(b.get("resamples", 2000)), int(b.get("seed", 0)), float(b.get("level", 0.95)))


def class_rows(run: Run) -> list[str]:
    """What holds at the level of symmetry classes (k ≤ 3, where every order is a candidate)."""
    if run.table is None or run.df["basis"].iloc[0] != "proxy" or run.patch > 3:
        return []
    try:
        per_image = {o: run.table.image_rates(od.DecodingOrder.parse(o)) for o in run.orders["order"]}
    except (ValueError, KeyError):  # a cost table without per-image costs
        return []
    classes = dict(zip(run.orders["order"], run.orders["symmetry_class"], strict=True))
    cmp = class_comparison(per_image, classes, run_bootstrap(run))
    if len(cmp) < 2:
        return []
    out = [
        "",
        "Symmetry classes (each the mean of its orders, per image) against the best class:",
        "",
        "| class | orders | vs best class [95% CI] | told apart |",
        "|---|---|---|---|",
    ]
    for _, c in cmp.iterrows():
        out.append(
            f"| `{c['class']}` | {c['orders']} | {c['gain_vs_best_class_pct']:+.3f}% "
            f"[{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] | {'yes' if c['distinguishable'] else 'no'} |"
        )
    exact = cmp[(cmp["ci_low"].abs() < 1e-9) & (cmp["ci_high"].abs() < 1e-9)]  # ties up to rounding
    if len(exact) > 1:
        out += [
            "",
            "Classes " + ", ".join(f"`{c}`" for c in exact["class"]) + " have the same mean rate on every "
            "image, exactly: over all their orders they sum the same stage costs c(S, q) (for 2×2: the "
            "first two positions adjacent, the third adjacent to either), so no amount of images can "
            "separate them by their means.",
        ]
    return out


def frontier_rows(run: Run) -> list[str]:
    """The frontier as a Markdown table: the best schedule within every stage budget."""
    fr = run.frontier
    if fr is None:
        return []
    lines = [
        f"Best schedule within T stages ({run.frontier_kind}, {run.patch}×{run.patch}, proxy rates; "
        "`frontier.csv`):",
        "",
        "| T | schedule | bpp | vs checkerboard | vs autoregressive |",
        "|---|---|---|---|---|",
    ]
    for _, r in fr.iterrows():
        lines.append(
            f"| {r['stages']} | `{r['order']}` | {r['bpp']:.4f} "
            f"| {fmt(r['gain_vs_checkerboard_pct'], unit='%')} "
            f"| {fmt(r['gain_vs_autoregressive_pct'], unit='%')} |"
        )
    return [*lines, ""]


def summary_rows(run: Run) -> list[str]:
    d = run.orders  # in rank order, on the run's basis
    best, basis_name = d.iloc[0], run.df["basis"].iloc[0]
    out = [
        f"### {run.label}",
        "",
        f"Held out: {run.held_out} ({run.manifest.get('latents', {}).get('images', '?')} images); strategy "
        f"{run.manifest['strategy']['strategy']}; {len(run.orders)} candidate orders; "
        f"run time {run.manifest['timings_s']['total_s']:.1f} s on {run.manifest['device']}. "
        f"Every rate on the **{basis_name}** basis.",
        "",
        "| rank | order | stages | source | proxy bits/latent | dedicated bits/latent | bpp | "
        "vs checkerboard [95% CI] | vs autoregressive [95% CI] |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [best]
    if run.paper() in set(d["order"]) and run.paper() != best["order"]:
        rows.append(d[d["order"] == run.paper()].iloc[0])
    rows.append(d.iloc[-1])
    rows += [run.baseline(b) for b in BASELINES]
    for r in rows:
        out.append(
            f"| {r['rank']} | `{r['order']}` | {r['stages']} | {r['source']} | "
            f"{fmt(r['proxy_bits_per_latent'], '.4f')} | {fmt(r['dedicated_bits_per_latent'], '.4f')} | "
            f"{fmt(r['bpp'], '.4f')} | {gain_text(r, 'checkerboard')} | {gain_text(r, 'autoregressive')} |"
        )
    tied = d[~d["distinguishable_from_best"].astype(bool)]
    shown = ", ".join(f"`{o}`" for o in tied["order"][:8]) + (", …" if len(tied) > 8 else "")
    out += [
        "",
        f"**{len(tied)} of {len(d)} orders cannot be told apart from the best** (the paired 95% interval "
        f"of their rate minus the best's includes 0): {shown}. "
        + (
            "Their differences from the best are within the noise of this number of images; a larger "
            "held-out folder (`--images DIR`) narrows the intervals."
            if len(tied) > 1
            else "The best order is resolved at this number of images."
        ),
    ]
    ar = run.baseline("autoregressive")
    if np.isfinite(ar["gain_vs_checkerboard_pct"]) and np.isfinite(best["gain_vs_autoregressive_pct"]):
        lo, hi = best["gain_vs_autoregressive_ci_low"], best["gain_vs_autoregressive_ci_high"]
        verdict = (
            "below autoregressive"
            if hi < 0
            else "above autoregressive"
            if lo > 0
            else "not distinguishable from autoregressive"
        )
        out += [
            "",
            f"The best {run.patch}×{run.patch} order ({best['stages']} stages) is {verdict}: "
            f"{gain_text(best, 'autoregressive')} against it; autoregressive is "
            f"{gain_text(ar, 'checkerboard')} against checkerboard.",
        ]
    out += class_rows(run)
    rc = run.manifest.get("rank_correlation", {})
    if "spearman" in rc:
        only = rc.get("orders_only", {})
        out += [
            "",
            f"Proxy against dedicated over {rc['n']} models ({run.verify_protocol()}): Spearman "
            f"{rc['spearman']:.3f}, Kendall {rc['kendall']:.3f}"
            + (
                f"; over the {only['n']} multistage orders alone: Spearman {only['spearman']:.3f}, "
                f"Kendall {only['kendall']:.3f}."
                if "spearman" in only
                else "."
            ),
        ]
    b = run_bootstrap(run)
    out += [
        "",
        f"Gains are (R − R_base)/R_base of ŷ's bits in percent, negative is better, all on the {basis_name} "
        f"basis (column `basis` of candidates.csv; dedicated rates, where measured, have their own column). "
        f"Intervals: paired bootstrap over the images, {b.resamples} resamples, seed {b.seed}. Proxy rates "
        "of different patch sizes come from different proxies: compare runs on dedicated rates.",
        "",
    ]
    return out
