"""Where does fine-tuning a dedicated model from the proxy help? A learning curve on three
sets: training images, unseen images of the training domain, and the held-out photographs.

A dedicated multistage model for ``--order`` starts from the shipped proxy
(:func:`orderopt.context.init_from_proxy`) and is fine-tuned by :func:`orderopt.fit.fit_context`,
as ``search --verify`` does; every ``--every`` steps its rate (bits per
latent) is measured on the first ``--train-subset`` training images, on the validation
latents and on the held-out latents (default: the embedded photographs).

    python -m orderopt.latents --images ../shared/datasets/bsds500/val \
        --out checkpoints/context/val_latents.pt
    python experiments/finetune_probe.py --order raster4 --steps 1000 --every 250 \
        --out results/finetune_probe_patch4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

from orderopt import data
from orderopt import orders as od
from orderopt.context import MultistageContext, init_from_proxy
from orderopt.fit import FitConfig, fit_context, load_context, measure
from orderopt.latents import cached_latents, load_latents
from orderopt.model import SHIPPED, load_model


def parse_order(text: str) -> od.DecodingOrder:
    if text.startswith("raster"):
        return od.raster(int(text[6:]))
    if text.startswith("paper"):
        return od.paper_order(int(text[5:]))
    return od.DecodingOrder.parse(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--order", default="raster4", help="order: rasterK, paperK or '0,1;2,3' (default raster4)")
    p.add_argument("--train-latents", default="checkpoints/context/train_latents.pt", help="training latents")
    p.add_argument("--val-latents", default="checkpoints/context/val_latents.pt", help="unseen, same domain")
    p.add_argument("--train-subset", type=int, default=40, help="training images measured (default 40)")
    p.add_argument("--steps", type=int, default=1000, help="fine-tuning steps (default 1000)")
    p.add_argument("--every", type=int, default=250, help="measure every this many steps (default 250)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4, as --verify)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", type=Path, default=Path("results/finetune_probe"), help="output stem")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    order = parse_order(args.order)
    train = load_latents(args.train_latents)
    base, meta = load_model()
    sets = {
        "train": dataclasses.replace(train, entries=train.entries[: args.train_subset]),
        "val": load_latents(args.val_latents),
        "held_out": cached_latents(base, meta["hash"], data.load_images(None))[0],
    }
    proxy = load_context(SHIPPED.parent / f"proxy_k{order.patch}.pt")[0]
    model = MultistageContext(order, train.latent_channels, train.hyper_channels)
    init_from_proxy(model, proxy)
    cfg = FitConfig(steps=args.steps, lr=args.lr)
    curve, t0 = [], time.time()

    def record(step: int) -> None:
        if step % args.every:
            return
        row = {"step": step, **{k: measure(model, v)["bits_per_latent"] for k, v in sets.items()}}
        curve.append(row)
        tqdm.write(json.dumps(row))

    record(0)
    fit_context(model, train, cfg, desc=str(order), on_step=record)  # exactly as search --verify
    cmd = (
        f"python experiments/finetune_probe.py --order {args.order} --steps {args.steps} --every {args.every}"
    )
    result = {
        "order": str(order),
        "config": dataclasses.asdict(cfg),
        "train_subset": args.train_subset,
        "curve": curve,
        "seconds": round(time.time() - t0, 1),
        "command": cmd + f" --out {args.out}",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    start = curve[0]
    lines = [
        f"# Fine-tuning {order} from the proxy: rate by step (bits per latent, change from step 0)\n",
        f"Regenerate: `{result['command']}`\n",
        "| step | training images | BSDS500 val (unseen) | embedded photographs (held out) |",
        "|---|---|---|---|",
    ]
    for row in curve:
        keys = ("train", "val", "held_out")
        cells = [f"{row[k]:.5f} ({100 * (row[k] / start[k] - 1):+.2f}%)" for k in keys]
        lines.append(f"| {row['step']} | " + " | ".join(cells) + " |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
