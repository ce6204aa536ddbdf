"""BD-rate of context models and decoding orders over the three shipped qualities.

Reads one search run per quality (made by ``python -m orderopt.search --quality Q``) for a
patch size, and the base model's PSNR on the same images at each quality (a decoding order
never changes the reconstruction, so every schedule of a quality shares its distortion).
Rows: hyperprior-only, checkerboard, autoregressive, the paper's order, TinyLIC's order (2×2)
and the best order found (the lowest proxy rate: the search's pick), each on its run's one
basis (the proxy's rates unless every row was verified: experiments/dedicated_bd_runs.sh). For each row:

- its gain against checkerboard and against autoregressive at every quality, with the 95%
  paired-bootstrap interval of the run (``candidates.csv``);
- its BD-rate over the three qualities (the ``bjontegaard`` package, Akima interpolation,
  bpp with ẑ against mean PSNR), against both baselines.

Writes OUT/STEM.{json,md,png}.

    python experiments/bd_rate_contexts.py --runs RUN_Q1 RUN_Q2 RUN_Q3 [--runs RUN_Q1 RUN_Q2 RUN_Q3]
        [--images DIR] [--stem STEM] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import bjontegaard as bd
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from outputs import save_results

from orderopt import data
from orderopt import orders as od
from orderopt.evaluate import evaluate
from orderopt.model import QUALITIES, load_model, shipped_quality


def named_rows(df: pd.DataFrame, patch: int) -> dict[str, pd.Series]:
    """The rows of a run this table reports, by name."""
    orders = df[df["source"] != "baseline"]
    rows = {
        name: df[df["order"] == name].iloc[0] for name in ("hyperprior", "checkerboard", "autoregressive")
    }
    paper = df[df["order"] == str(od.paper_order(patch))]
    if len(paper):
        rows[f"paper {patch}×{patch}"] = paper.iloc[0]
    tiny = df[df["source"].str.contains("tinylic")]
    if len(tiny):
        rows[f"TinyLIC {patch}×{patch}"] = tiny.iloc[0]
    # the search's pick: the lowest proxy rate (on the dedicated basis the rank-1 order would be
    # picked on the held-out rates it reports)
    best = orders.loc[orders["proxy_bits_per_latent"].astype(float).idxmin()]
    rows[f"best {patch}×{patch} ({best['order']})"] = best
    return rows


def quality_psnr(run: Path, cache: dict, images: str | None = None) -> tuple[int, float]:
    """The shipped quality of a run's base model and its mean PSNR on the run's images (on
    ``images`` instead when given)."""
    m = json.loads((run / "manifest.json").read_text())
    q = shipped_quality(m["model_hash"])
    if q is None:
        raise SystemExit(f"{run}: its base model {m['model_hash']} is not a shipped quality")
    images = images or m["arguments"].get("images")
    key = (q, images)
    if key not in cache:
        model, _ = load_model(quality=q)
        rows = evaluate(model, data.load_images(images))
        cache[key] = float(np.mean([r["psnr"] for r in rows]))
    return q, cache[key]


def bd_rate(rates: list[float], psnrs: list[float], base: list[float]) -> float:
    return float(bd.bd_rate(base, psnrs, rates, psnrs, method="akima"))


def stopping_lines(runs: list[Path], entries: list[dict]) -> list[str]:
    """Where each row's early-stopped dedicated models stopped (``search --verify-early-stop``),
    per quality; nothing for fixed-budget runs."""
    dedicated = [json.loads((r / "manifest.json").read_text()).get("dedicated") or {} for r in runs]
    if not all(any("stopped_at" in rec for rec in d.values()) for d in dedicated):
        return []
    lines = [
        "Early stopping: the step whose weights each dedicated model kept (its lowest rate on a tenth "
        "of the training images held out from its training), of the steps it ran, at q1 / q2 / q3:",
        "",
        "| schedule | kept step / steps run |",
        "|---|---|",
    ]
    for e in entries:
        cells = []
        for d, order in zip(dedicated, e["orders"], strict=True):
            rec = d.get(order, {})
            cells.append(f"{rec['stopped_at']} / {rec['steps_run']}" if "stopped_at" in rec else "–")
        lines.append(f"| {e['name']} | {' ; '.join(cells)} |")
    return [*lines, ""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--runs",
        nargs=3,
        action="append",
        required=True,
        metavar="RUN",
        help="search runs of q1, q2, q3 (repeatable)",
    )
    p.add_argument("--out", default="results", help="output folder (default results)")
    p.add_argument("--stem", default="bd_rate_contexts", help="output file stem (default bd_rate_contexts)")
    p.add_argument(
        "--images",
        help="measure the base models' PSNR on this image folder instead of on each run's own images "
        "(default: each run's images, the embedded photographs unless its search had --images)",
    )
    args = p.parse_args()
    cache: dict = {}
    table, lines = [], []
    for group in args.runs:
        runs = [Path(r) for r in group]
        qs, psnrs, frames = [], [], []
        for run in runs:
            q, psnr = quality_psnr(run, cache, args.images)
            qs.append(q)
            psnrs.append(psnr)
            frames.append(pd.read_csv(run / "candidates.csv"))
        if sorted(qs) != list(QUALITIES) or qs != sorted(qs):
            raise SystemExit(f"give the runs of qualities {list(QUALITIES)} in that order, got {qs}")
        patch = int(json.loads((runs[0] / "manifest.json").read_text())["arguments"]["patch"])
        bases = sorted({str(df["basis"].iloc[0]) for df in frames})
        if len(bases) != 1:
            raise SystemExit(
                f"the runs {', '.join(group)} are on different bases ({', '.join(bases)}): give runs "
                "that are all proxy-rated or all verified (experiments/dedicated_bd_runs.sh)"
            )
        per_q = [named_rows(df, patch) for df in frames]
        names = [n for n in per_q[1] if all(n.split(" (")[0] in {m.split(" (")[0] for m in r} for r in per_q)]
        for name in names:
            stem = name.split(" (")[0]
            rows = [next(r for m, r in rq.items() if m.split(" (")[0] == stem) for rq in per_q]
            bpps = [float(r["bpp"]) for r in rows]
            label = name if stem.startswith("best") else stem  # the best row names its order
            if stem.startswith("best") and len({str(r["order"]) for r in rows}) > 1:
                label = f"{stem} (each quality's pick)"  # the picks are listed below the table
            entry = {
                "patch": patch,
                "name": label,
                "basis": rows[0]["basis"],
                "orders": [str(r["order"]) for r in rows],
                "bpp": bpps,
                "psnr": psnrs,
            }
            for b in ("checkerboard", "autoregressive"):
                base = [float(rq[b]["bpp"]) for rq in per_q]
                entry[f"bd_rate_vs_{b}_pct"] = bd_rate(bpps, psnrs, base) if np.isfinite(base).all() else None
                entry[f"gain_vs_{b}_pct"] = [
                    [float(r[f"gain_vs_{b}_{c}"]) for c in ("pct", "ci_low", "ci_high")] for r in rows
                ]
            table.append(entry)
        lines += [
            f"## {patch}×{patch} runs, {bases[0]} rates: {', '.join(str(r) for r in runs)}",
            "",
            f"PSNR (dB) of q1–q3 on {args.images or 'these images'}: "
            + ", ".join(f"{v:.2f}" for v in psnrs)
            + ".",
            "",
            "| schedule | bpp q1 / q2 / q3 | BD-rate vs checkerboard "
            "| gain vs checkerboard per quality [95% CI] "
            "| BD-rate vs autoregressive | gain vs autoregressive per quality [95% CI] |",
            "|---|---|---|---|---|---|",
        ]
        for e in (t for t in table if t["patch"] == patch):

            def cells(b: str, e=e) -> tuple[str, str]:
                v = e[f"bd_rate_vs_{b}_pct"]
                per = "; ".join(
                    "–" if not np.isfinite(g) else f"{g:+.2f} [{lo:+.2f}, {hi:+.2f}]"
                    for g, lo, hi in e[f"gain_vs_{b}_pct"]
                )
                return ("–" if v is None else f"{v:+.2f}%"), per

            c_bd, c_per = cells("checkerboard")
            a_bd, a_per = cells("autoregressive")
            bpps = " / ".join(f"{v:.4f}" for v in e["bpp"])
            lines.append(f"| {e['name']} | {bpps} | {c_bd} | {c_per} | {a_bd} | {a_per} |")
        lines.append("")
        lines += stopping_lines(runs, [t for t in table if t["patch"] == patch])
        for e in (
            t
            for t in table
            if t["patch"] == patch and t["name"].startswith("best") and len(set(t["orders"])) > 1
        ):
            picks = ", ".join(f"q{i + 1} `{o}`" for i, o in enumerate(e["orders"]))
            lines += [f"The search's picks (lowest proxy rate) differ by quality: {picks}.", ""]
    fig, axes = plt.subplots(
        1, 3, figsize=(19, 0.45 * len(table) + 2), squeeze=False, gridspec_kw={"width_ratios": [0.8, 1, 1]}
    )
    labels = [
        f"{e['name']} ({e['patch']}×{e['patch']} run)"
        if not e["name"].startswith(("best", "paper", "TinyLIC"))
        else e["name"]
        for e in table
    ]
    y = np.arange(len(table))
    # the rate-distortion curves: a schedule moves a quality's point along the rate axis only
    rd = axes[0][0]
    for i, (e, label) in enumerate(zip(table, labels, strict=True)):
        style = "-" if e["patch"] == 2 else "--"
        rd.plot(e["bpp"], e["psnr"], style, marker="o", ms=3, lw=1, color=plt.cm.tab20(i % 20), label=label)
    rd.set_xlabel("bits per pixel (ŷ and ẑ)")
    rd.set_ylabel("PSNR (dB)")
    rd.set_title("rate–distortion (solid: 2×2 runs, dashed: 4×4)", fontsize=9)
    rd.grid(alpha=0.3)
    rd.legend(fontsize=6, loc="lower right")
    for ax, b in zip(axes[0][1:], ("checkerboard", "autoregressive"), strict=True):
        vals = [e[f"bd_rate_vs_{b}_pct"] if e[f"bd_rate_vs_{b}_pct"] is not None else np.nan for e in table]
        ax.barh(y, vals, color="0.75", label="BD-rate over q1–q3")
        for i, e in enumerate(table):
            for j, (g, lo, hi) in enumerate(e[f"gain_vs_{b}_pct"]):
                if np.isfinite(g):
                    ax.errorbar(
                        g,
                        i + (j - 1) * 0.22,
                        xerr=[[g - lo], [hi - g]],
                        fmt="o",
                        ms=3,
                        color=f"C{j}",
                        capsize=2,
                        label=f"q{j + 1} (95% CI)" if i == 0 else None,
                    )
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(y, labels if b == "checkerboard" else [""] * len(y), fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(f"rate change vs {b} (%), lower is better")
        ax.grid(alpha=0.3, axis="x")
        ax.legend(fontsize=7, loc="best")
    bases = sorted({e["basis"] for e in table})
    fig.suptitle(
        "Context models and decoding orders over three qualities "
        f"({' and '.join(bases)} rates, held-out images)"
    )
    fig.tight_layout()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / f"{args.stem}.png", dpi=100)
    command = "python experiments/bd_rate_contexts.py " + " ".join("--runs " + " ".join(g) for g in args.runs)
    command += f" --images {args.images}" if args.images else ""
    command += f" --stem {args.stem}" if args.stem != "bd_rate_contexts" else ""
    command += f" --out {args.out}" if args.out != "results" else ""
    text = (
        "# BD-rate of context models and decoding orders over three qualities\n\n"
        "Rates on each run's basis (the proxy's unless stated), ŷ and ẑ; BD-rate with the `bjontegaard` "
        "package (Akima) over the shipped qualities q1–q3, whose PSNR a decoding order does not change. "
        "Negative is better.\n"
        f"Regenerate: `{command}`.\n\n" + "\n".join(lines) + f"\n![BD-rate]({args.stem}.png)\n"
    )
    save_results({"command": command, "rows": table}, text, out, args.stem)
    print(text)


if __name__ == "__main__":
    main()
