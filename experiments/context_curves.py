"""Held-out learning curves of the shipped context models (one panel per quality).

Reads the records ``results/context/q*_{proxy_k2,proxy_k4,autoregressive}.json`` written by
``experiments/train_shipped_context.sh`` (``held_out_curve``: bits per latent element on the
embedded photographs every 500 steps; for a proxy, those of the patch's raster order and of
its autoregressive mask) and plots them, with the last relative improvement per model, so
that one sees whether each model had stopped improving.

    python experiments/context_curves.py [--dir results/context]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from outputs import save_results

SERIES = {
    "proxy_k2": [
        ("raster_order_bits_per_latent", "2×2 proxy, raster order"),
        ("autoregressive_bits_per_latent", "2×2 proxy, AR mask"),
    ],
    "proxy_k4": [
        ("raster_order_bits_per_latent", "4×4 proxy, raster order"),
        ("autoregressive_bits_per_latent", "4×4 proxy, AR mask"),
    ],
    "autoregressive": [("bits_per_latent", "autoregressive model")],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", default="results/context", help="folder of the records (default results/context)")
    args = p.parse_args()
    folder = Path(args.dir)
    qualities = sorted({f.name.split("_")[0] for f in folder.glob("q*_*.json")})
    fig, axes = plt.subplots(1, len(qualities), figsize=(5.5 * len(qualities), 4), squeeze=False)
    lines = [
        "| quality | model | curve | steps | first | last | last change over 500 steps |",
        "|---|---|---|---|---|---|---|",
    ]
    result = {}
    for q, ax in zip(qualities, axes[0], strict=True):
        for name, series in SERIES.items():
            path = folder / f"{q}_{name}.json"
            if not path.is_file():
                continue
            rec = json.loads(path.read_text())
            curve = rec.get("held_out_curve", [])
            init = rec.get("init", {}).get("from")
            for key, label in series:
                pts = [(c["step"], c[key]) for c in curve if key in c]
                if not pts:
                    continue
                steps, vals = zip(*pts, strict=True)
                ax.plot(steps, vals, "o-", ms=3, label=label)
                change = 100 * (vals[-1] / vals[-2] - 1) if len(vals) > 1 else float("nan")
                result[f"{q}/{name}/{key}"] = {"steps": list(steps), "values": list(vals), "init": init}
                lines.append(
                    f"| {q} | {name}{' (from ' + init + ')' if init else ''} | {label} | {steps[-1]} | "
                    f"{vals[0]:.4f} | {vals[-1]:.4f} | {change:+.2f}% |"
                )
        ax.set(
            title=f"{q}: held-out bits per latent (embedded photographs)",
            xlabel="training step",
            ylabel="bits per latent element",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "curves.png", dpi=100)
    text = (
        "# Held-out learning curves of the shipped context models\n\n"
        "Regenerate: `python experiments/context_curves.py`. The learning rate drops ÷10 for the last 20% "
        "of each model's steps, which gives the last step's drop.\n\n"
        + "\n".join(lines)
        + "\n\n![curves](curves.png)\n"
    )
    save_results(
        {"command": "python experiments/context_curves.py", "curves": result}, text, folder, "curves"
    )
    print(text)


if __name__ == "__main__":
    main()
