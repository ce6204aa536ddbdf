"""The report's figures, one function per PNG, each drawing every run given (see
:mod:`orderopt.report` for what each shows)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from . import orders as od
from .data import EMBEDDED_NAME
from .errors import UserError
from .files import atomic_write
from .results import BASELINES, Run


def rate_column(df: pd.DataFrame) -> pd.Series:
    """Bits per latent on the run's one basis (column ``basis``: proxy or dedicated)."""
    basis = df["basis"].iloc[0] if len(df) else "proxy"
    return df[f"{basis}_bits_per_latent"]


def error_bars(d: pd.DataFrame, col: str) -> np.ndarray:
    """(2, n) distances from each gain to its interval's ends (0 where there is no interval)."""
    lo = (d[col] - d[col.replace("_pct", "_ci_low")]).fillna(0).clip(lower=0)
    hi = (d[col.replace("_pct", "_ci_high")] - d[col]).fillna(0).clip(lower=0)
    return np.vstack([lo.to_numpy(), hi.to_numpy()])


# --- figures ---------------------------------------------------------------------------------
def save_figure(fig, path: Path) -> None:
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def fig_gains(runs: list[Run], path: Path) -> None:
    fig, axes = plt.subplots(len(runs), 2, figsize=(12, 3.8 * len(runs)), squeeze=False)
    for run, row in zip(runs, axes, strict=True):
        basis = run.df["basis"].iloc[0]
        for ax, col, base in zip(
            row,
            ("gain_vs_checkerboard_pct", "gain_vs_autoregressive_pct"),
            ("checkerboard", "autoregressive"),
            strict=True,
        ):
            d = run.orders.dropna(subset=[col]).sort_values(col)
            if d.empty:
                ax.text(
                    0.5,
                    0.5,
                    f"no {base} rate on the {basis} basis\n(a proxy trained with --raster-fraction rates it)",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                )
                ax.set_axis_off()
                continue
            colors = ["tab:red" if o == run.paper() else "tab:blue" for o in d["order"]]
            x = np.arange(len(d))
            ax.bar(x, d[col], color=colors, width=0.85)
            ax.errorbar(
                x, d[col], yerr=error_bars(d, col), fmt="none", ecolor="0.25", elinewidth=0.8, capsize=1.5
            )
            handles = [Patch(color="tab:blue", label="candidate orders (95% interval over images)")]
            for b, style in (("hyperprior", ":"), ("checkerboard", "--"), ("autoregressive", "-.")):
                v = run.baseline(b)[col]
                if np.isfinite(v):
                    handles.append(ax.axhline(v, color="k", ls=style, lw=1, label=f"{b} ({v:+.2f}%)"))
            if run.paper() in set(d["order"]):
                handles.insert(1, Patch(color="tab:red", label=f"paper's order {run.paper()}"))
            ax.set_title(f"{run.label}\ngain vs {base}, {basis} rates", fontsize=9)
            ax.set_xlabel("candidates, sorted by gain")
            ax.set_ylabel(f"rate change vs {base} (%), lower is better")
            ax.legend(handles=handles, fontsize=7, loc="best")
            ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path)


def draw_grid(ax, order: od.DecodingOrder, title: str) -> None:
    s = order.stages
    ax.imshow(s, cmap="viridis", vmin=0, vmax=max(1, order.num_stages - 1))
    for (r, c), v in np.ndenumerate(s):
        ax.text(
            c,
            r,
            str(v),
            ha="center",
            va="center",
            color="w" if v < order.num_stages / 2 else "k",
            fontsize=14 if order.patch <= 2 else 10,
        )
    ax.set_xticks(range(order.patch))
    ax.set_yticks(range(order.patch))
    ax.set_xlabel("column in patch")
    ax.set_ylabel("row in patch")
    ax.set_title(title, fontsize=9)


def fig_orders(runs: list[Run], path: Path) -> None:
    fig, axes = plt.subplots(len(runs), 3, figsize=(10, 3.4 * len(runs)), squeeze=False)
    for run, row in zip(runs, axes, strict=True):
        d = run.orders.assign(rate=rate_column(run.orders)).sort_values("rate")
        picks = [("best", d.iloc[0]), ("worst", d.iloc[-1])]
        if run.paper() in set(d["order"]):
            picks.append(("paper", d[d["order"] == run.paper()].iloc[0]))
        for ax, (name, r) in zip(row, picks, strict=False):
            draw_grid(
                ax, od.DecodingOrder.parse(r["order"]), f"{name}: {r['order']}\n{r['rate']:.4f} bits/latent"
            )
        for ax in row[len(picks) :]:
            ax.set_axis_off()
    fig.suptitle("Decoding orders (stage number of each in-patch position; lower decodes first)")
    save_figure(fig, path)


def fig_stages(runs: list[Run], path: Path) -> bool:
    usable = [r for r in runs if r.table is not None]
    if not usable:
        return False
    fig, axes = plt.subplots(1, len(usable), figsize=(6 * len(usable), 3.8), squeeze=False)
    for run, ax in zip(usable, axes[0], strict=True):
        best = od.DecodingOrder.parse(run.orders.sort_values("proxy_bits_per_latent").iloc[0]["order"])
        for order, name in ((best, f"best {best}"), (od.raster(run.patch), "raster")):
            try:
                costs = np.array(run.table.stage_costs(order)) / (run.table.num_elements / run.patch**2)
            except ValueError:
                continue
            ax.plot(np.arange(order.num_stages), costs, "o-", label=name)
        ax.set_title(f"{run.label}: bits per stage")
        ax.set_xlabel("stage")
        ax.set_ylabel("bits per latent decoded at the stage")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    save_figure(fig, path)
    return True


def fig_proxy_vs_dedicated(runs: list[Run], path: Path) -> bool:
    have = [r for r in runs if r.df["dedicated_bits_per_latent"].notna().sum() >= 3]
    if not have:
        return False
    fig, axes = plt.subplots(1, len(have), figsize=(5.5 * len(have), 5), squeeze=False)
    for run, ax in zip(have, axes[0], strict=True):
        d = run.df.dropna(subset=["dedicated_bits_per_latent", "proxy_bits_per_latent"])
        rc = run.manifest.get("rank_correlation", {})
        only = rc.get("orders_only", {})
        base = d["source"] == "baseline"
        ax.scatter(d[~base]["proxy_bits_per_latent"], d[~base]["dedicated_bits_per_latent"], label="orders")
        ax.scatter(
            d[base]["proxy_bits_per_latent"],
            d[base]["dedicated_bits_per_latent"],
            marker="s",
            label="baselines",
        )
        lo = min(d["proxy_bits_per_latent"].min(), d["dedicated_bits_per_latent"].min())
        hi = max(d["proxy_bits_per_latent"].max(), d["dedicated_bits_per_latent"].max())
        ax.plot([lo, hi], [lo, hi], "--", color="0.6", lw=0.8, label="dedicated = proxy")
        for _, r in d.iterrows():
            ax.annotate(r["order"], (r["proxy_bits_per_latent"], r["dedicated_bits_per_latent"]), fontsize=6)
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.set_xlabel("proxy rate (bits per latent)")
        ax.set_ylabel("dedicated rate (bits per latent)")
        ax.set_title(
            f"{run.label}\n{run.verify_protocol()}\nSpearman {rc.get('spearman', float('nan')):.2f}, "
            f"Kendall {rc.get('kendall', float('nan')):.2f} (n={rc.get('n', len(d))}); orders alone "
            f"{only.get('spearman', float('nan')):.2f} (n={only.get('n', 0)})",
            fontsize=8,
        )
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("Proxy against dedicated models")
    save_figure(fig, path)
    return True


def latent_size(run: Run) -> tuple[int, int]:
    """Mean latent height and width of the run's images (from its cached latents if present)."""
    hw = int(run.baseline("autoregressive")["stages"])
    side = max(1, int(round(np.sqrt(hw))))
    return side, max(1, hw // side)


def fig_tradeoff(runs: list[Run], path: Path) -> None:
    """Rate (as the gain against checkerboard, with its interval) against serial decoding
    stages, one panel per run, every point on the run's one basis."""
    fig, axes = plt.subplots(1, len(runs), figsize=(7 * len(runs), 4.8), squeeze=False)
    col = "gain_vs_checkerboard_pct"
    for run, ax in zip(runs, axes[0], strict=True):
        d = run.df
        best = run.orders.iloc[0]  # rows are in rank order
        pts = [
            (run.baseline("hyperprior"), 1, "hyperprior-only"),
            (run.baseline("checkerboard"), 2, "checkerboard"),
        ]
        pts.append((best, best["stages"], f"best {run.patch}×{run.patch} {best['order']}"))
        if run.paper() in set(d["order"]) and run.paper() != best["order"]:
            pts.append((d[d["order"] == run.paper()].iloc[0], run.patch**2, f"paper {run.patch}×{run.patch}"))
        ar = run.baseline("autoregressive")
        if np.isfinite(ar[col]):
            h, w = latent_size(run)
            pts += [(ar, ar["stages"], "autoregressive (H·W stages)"), (ar, w + 3 * h, "AR wavefront (W+3H)")]
        pts = [p for p in pts if np.isfinite(p[0][col])]
        fr = run.frontier
        if fr is not None and np.isfinite(fr[col]).all():
            ax.step(
                fr["stages"],
                fr[col],
                where="post",
                color="0.4",
                lw=1.2,
                label=f"frontier ({run.frontier_kind}; proxy rates)",
            )
        for i, (r, x, name) in enumerate(pts):
            frame = pd.DataFrame([r])
            ax.errorbar(
                x, r[col], yerr=error_bars(frame, col), fmt="o", capsize=3, color=f"C{i % 10}", label=name
            )
        ax.set_xscale("log")
        ax.set_xlabel("serial decoding stages (log scale)")
        ax.set_ylabel("rate change vs checkerboard (%), lower is better")
        if not pts:
            ax.text(
                0.5, 0.5, "no schedule has a rate against checkerboard", ha="center", transform=ax.transAxes
            )
            continue
        ax.set_title(f"{run.label}\n{run.df['basis'].iloc[0]} rates, 95% intervals over images", fontsize=9)
        ax.legend(fontsize=7, loc="best")
        ax.grid(alpha=0.3, which="both")
    save_figure(fig, path)


def fig_random(runs: list[Run], path: Path) -> bool:
    big = [r for r in runs if r.patch >= 3 and (r.df["source"] == "random").sum() >= 5]
    if not big:
        return False
    fig, axes = plt.subplots(1, len(big), figsize=(6 * len(big), 3.8), squeeze=False)
    for run, ax in zip(big, axes[0], strict=True):
        d = run.df
        ax.hist(
            d[d["source"] == "random"]["proxy_bits_per_latent"], bins=30, color="0.7", label="random orders"
        )
        best = run.orders.sort_values("proxy_bits_per_latent").iloc[0]
        marks = [
            ("best", best["proxy_bits_per_latent"], "tab:green"),
            ("raster", d[d["order"] == str(od.raster(run.patch))]["proxy_bits_per_latent"].min(), "tab:blue"),
        ]
        if run.paper():
            marks.append(("paper", d[d["order"] == run.paper()]["proxy_bits_per_latent"].min(), "tab:red"))
        for name, v, color in marks:
            if np.isfinite(v):
                ax.axvline(v, color=color, label=f"{name} ({v:.4f})")
        ax.set_title(f"{run.label}: random orders")
        ax.set_xlabel("proxy rate (bits per latent)")
        ax.set_ylabel("number of orders")
        ax.legend(fontsize=8)
    save_figure(fig, path)
    return True


def load_decode_time(path: str | Path, runs: list[Run]) -> dict:
    """The decoding-time benchmark of ``experiments/bench_decode.py``, checked against the runs."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
        medians = {k: float(v["latent_s"]) for k, v in d["median_over_images"].items()}
    except FileNotFoundError:
        raise UserError(
            f"decode-time file {path} does not exist: run `python experiments/bench_decode.py`"
        ) from None
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(
            f"{path} is not a decoding-time file of `python experiments/bench_decode.py`"
        ) from None
    hashes = {r.manifest.get("model_hash") for r in runs}
    if d.get("model_hash") not in hashes:
        raise UserError(
            f"{path} timed model {d.get('model_hash')}, the runs are of {sorted(map(str, hashes))}: "
            "time the same model"
        )
    return {**d, "latent_s": medians}


def basis(row: pd.Series) -> str:
    """A label suffix naming the row's rate basis."""
    return f" ({row['basis']} rate)"


def decode_time_points(runs: list[Run], timing: dict) -> list[tuple[float, float, str, str]]:
    """(ŷ decoding ms, bpp, label, kind) for each timed schedule; the best order of a run is
    drawn at the time of the paper's order with the same patch (same stages, same network).
    Rates of different images do not compare: only runs held out on the images the benchmark
    times (the embedded photographs; else the first run's images) are drawn, the first of each
    patch size."""
    timed = EMBEDDED_NAME if any(r.held_out == EMBEDDED_NAME for r in runs) else runs[0].held_out
    runs = [r for r in runs if r.held_out == timed]
    runs = [r for i, r in enumerate(runs) if r.patch not in {q.patch for q in runs[:i]}]
    first, pts = runs[0], []
    for name, sec in timing["latent_s"].items():
        ms = 1000 * sec
        if name in BASELINES:
            pts.append((ms, float(first.baseline(name)["bpp"]), name, "baseline"))
            continue
        for run in runs:
            if name != f"paper {run.patch}x{run.patch}":
                continue
            paper = run.df[run.df["order"] == run.paper()]
            if len(paper):
                row = paper.iloc[0]
                pts.append((ms, float(row["bpp"]), f"paper {run.patch}×{run.patch}{basis(row)}", "paper"))
            best = run.orders.assign(rate=rate_column(run.orders)).sort_values("rate").iloc[0]
            pts.append((ms, float(best["bpp"]), f"best {run.patch}×{run.patch}{basis(best)}", "best"))
    return [p for p in pts if np.isfinite(p[1])]


def fig_decode_time(runs: list[Run], timings: list[dict], path: Path) -> None:
    """One panel per decoding-time benchmark (a CPU and a GPU one, say), rates shared."""
    fig, axes = plt.subplots(1, len(timings), figsize=(7 * len(timings), 4.8), sharey=True, squeeze=False)
    styles = {"baseline": ("o", "tab:gray"), "paper": ("s", "tab:red"), "best": ("*", "tab:green")}
    for ax, timing in zip(axes[0], timings, strict=True):
        seen = set()
        for ms, bpp, label, kind in decode_time_points(runs, timing):
            marker, color = styles[kind]
            legend = {"baseline": "baselines", "paper": "paper's order", "best": "best order found"}[kind]
            ax.plot(ms, bpp, marker, color=color, ms=9, label=None if kind in seen else legend)
            seen.add(kind)
            ax.annotate(
                label,
                (ms, bpp),
                fontsize=7,
                xytext=(5, 4 if kind != "best" else -10),
                textcoords="offset points",
            )
        ax.set_xscale("log")
        ax.set_xlabel("ŷ decoding time (ms, median over images, log scale)")
        ax.set_title(
            "Rate against decoding time\n"
            + textwrap.fill(f"{timing.get('device', '?')}; ŷ coder {timing.get('coder', 'gaussian')}", 60),
            fontsize=9,
        )
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("rate (bits per pixel, ŷ and ẑ)")
    save_figure(fig, path)
