"""Held-out learning curves of the shipped context models (one panel per quality).

Reads the records ``results/context/q*_{proxy_k2,proxy_k4,autoregressive}.json`` written by
``experiments/train_shipped_context.sh`` (``held_out_curve``: bits per latent element on the
embedded photographs every 500 steps; for a proxy, those of the patch's raster order and of
its autoregressive mask) and plots them, with the last relative improvement per model, so
that one sees whether each model had stopped improving.

    python experiments/context_curves.py [--dir results/context] [--out DIR] [--images DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from outputs import save_results

from orderopt import data
from orderopt.latents import cached_latents
from orderopt.model import gaussian_bits, load_model


@torch.no_grad()
def base_bits_per_latent(quality: int, images: str | None = None) -> float:
    """Bits per latent element of the base model's own entropy model (the hyperprior alone) on
    the embedded photographs (or ``images``): the rate every context model starts to improve on."""
    model, meta = load_model(quality=quality)
    lat, _ = cached_latents(model, meta["hash"], data.load_images(images), progress=False)
    bits = 0.0
    for e in lat.entries:
        means, scales = model.split_hyper(e.hyper[None])
        bits += float(gaussian_bits(e.y_hat[None], means, scales).double().sum())
    return bits / sum(e.y_hat.numel() for e in lat.entries)


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


def stage_files(folder: Path, stem: str) -> list[Path]:
    """The records of a model's earlier training stages, first first."""
    out, i = [], 1
    while (folder / f"{stem}.stage{i}.json").is_file():
        out.append(folder / f"{stem}.stage{i}.json")
        i += 1
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", default="results/context", help="folder of the records (default results/context)")
    p.add_argument("--out", help="output folder of curves.{png,json,md} (default: the --dir folder)")
    p.add_argument(
        "--images",
        help="image folder the base models' own rate (the dashed line) is measured on (default: the "
        "embedded photographs, those of the records' curves)",
    )
    args = p.parse_args()
    folder = Path(args.dir)
    out = Path(args.out) if args.out else folder
    command = "python experiments/context_curves.py" + "".join(
        f" --{k} {v}"
        for k, v in (("dir", args.dir), ("out", args.out), ("images", args.images))
        if v and v != p.get_default(k)
    )
    qualities = sorted({f.name.split("_")[0] for f in folder.glob("q*_*.json")})
    fig, axes = plt.subplots(1, len(qualities), figsize=(5.5 * len(qualities), 4), squeeze=False)
    lines = [
        "| quality | model | curve | steps | first | last | last change over 500 steps |",
        "|---|---|---|---|---|---|---|",
    ]
    result = {}
    base_lines = ["| quality | base model's own hyperprior (bits per latent) |", "|---|---|"]
    for q, ax in zip(qualities, axes[0], strict=True):
        base = base_bits_per_latent(int(q[1:]), args.images)
        result[f"{q}/base"] = base
        base_lines.append(f"| {q} | {base:.4f} |")
        ax.axhline(base, color="k", ls="--", lw=1, label="base model's hyperprior alone")
        for name, series in SERIES.items():
            path = folder / f"{q}_{name}.json"
            if not path.is_file():
                continue
            rec = json.loads(path.read_text())
            curve = rec.get("held_out_curve", [])
            init = rec.get("init", {}).get("from")
            # a model trained in stages (qQ_name.stage1.json, .stage2.json, …, then qQ_name.json):
            # one curve, each stage's steps after the last
            stages = [json.loads(p.read_text()) for p in stage_files(folder, f"{q}_{name}")] + [rec]
            if len(stages) > 1:
                curve, offset = [], 0
                for st in stages:
                    curve += [{**c, "step": c["step"] + offset} for c in st["held_out_curve"]]
                    offset = curve[-1]["step"]
                init = stages[0].get("init", {}).get("from")
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
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "curves.png", dpi=100)
    text = (
        "# Held-out learning curves of the shipped context models\n\n"
        f"Regenerate: `{command}`. The learning rate drops ÷10 for the last 20% "
        "of each model's steps, which gives the last step's drop. Curves start from random weights (q2) or "
        "from q2's models (q1, q3: `init`; their proxies in stages of 1,500 steps, each resumed from "
        "the previous stage's weights with a fresh optimizer and the next seed: two for q1, three for "
        "q3); the dashed line is the "
        "base model's own entropy model, the rate with no spatial context that every context model has "
        "to beat.\n\n" + "\n".join(base_lines) + "\n\n" + "\n".join(lines) + "\n\n![curves](curves.png)\n"
    )
    save_results({"command": command, "curves": result}, text, out, "curves")
    print(text)


if __name__ == "__main__":
    main()
