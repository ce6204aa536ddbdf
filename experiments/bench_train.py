"""Training speed of the context models at the shipped configuration (batch 16, 16×16 crops).

Steps per second of the 2×2 and 4×4 proxies, 2×2 and 4×4 multistage models and the autoregressive
model, trained on the embedded photographs' latents (speed does not depend on which latents),
after a few warm-up steps. Answers "how long would --verify or a longer proxy take here".

Writes results/bench_train.{json,md} (``bench_train_cuda.*`` with --device cuda).
    python experiments/bench_train.py [--steps 40] [--device cuda]
        [--model CKPT] [--images DIR] [--batch 16] [--crop 16] [--warmup 5]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
from outputs import save_results

from orderopt import data
from orderopt import orders as od
from orderopt.devices import add_device_option, device_name, torch_device
from orderopt.fit import FitConfig, build_context, fit_context
from orderopt.latents import extract_latents
from orderopt.model import load_model

MODELS = {
    "proxy 2x2": ("anyorder", None, 2),
    "proxy 4x4": ("anyorder", None, 4),
    "multistage 2x2 (paper)": ("multistage", str(od.paper_order(2)), None),
    "multistage 4x4 (paper)": ("multistage", str(od.paper_order(4)), None),
    "autoregressive": ("autoregressive", None, None),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cfg = FitConfig()
    p.add_argument("--steps", type=int, default=40, help="timed optimisation steps per model (default 40)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    add_device_option(p, "cpu")
    p.add_argument("--out", default="results", help="output folder (default results)")
    p.add_argument("--model", help="base-model checkpoint (default: the shipped model)")
    p.add_argument("--images", help="image folder of the latents (default: the embedded photographs)")
    p.add_argument("--batch", type=int, default=cfg.batch, help=f"crops per step (default {cfg.batch})")
    p.add_argument("--crop", type=int, default=cfg.crop, help=f"crop side in latents (default {cfg.crop})")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before the timed ones (default 5)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch_device(args.device)
    base, meta = load_model(args.model)
    lat = extract_latents(base, data.load_images(args.images), meta["hash"], progress=False)
    cfg = FitConfig(batch=args.batch, crop=args.crop)
    m, c = lat.latent_channels, lat.hyper_channels
    rows = {}
    for name, (kind, order, patch) in MODELS.items():
        model = build_context(kind, m, c, order=order, patch=patch)
        if args.warmup:
            fit_context(model, lat, replace(cfg, steps=args.warmup), progress=False, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        fit_context(model, lat, replace(cfg, steps=args.steps, seed=1), progress=False, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rate = args.steps / (time.perf_counter() - t)
        rows[name] = {"steps_per_s": rate, "seconds_per_1000_steps": 1000 / rate}
        print(f"{name:24s} {rate:8.1f} steps/s ({1000 / rate:.0f} s per 1,000 steps)")
    stem = "bench_train" if device.type == "cpu" else f"bench_train_{device.type}"
    command = "python experiments/bench_train.py" + (
        f" --device {args.device}" if device.type != "cpu" else ""
    )
    command += "".join(
        f" --{k} {v}"
        for k, v in vars(args).items()
        if k in ("steps", "model", "images", "batch", "crop", "warmup") and v != p.get_default(k)
    )
    result = {
        "device": device_name(device),
        "torch": torch.__version__,
        "config": {"batch": cfg.batch, "crop": cfg.crop, "steps": args.steps},
        "models": rows,
        "command": command,
    }
    table = "\n".join(
        f"| {k} | {v['steps_per_s']:.1f} | {v['seconds_per_1000_steps']:.0f} |" for k, v in rows.items()
    )
    text = (
        f"# Context-model training speed ({result['device']}, torch {result['torch']})\n\n"
        f"Regenerate: `{command}`. Batch {cfg.batch} crops of {cfg.crop}×{cfg.crop} latents, "
        f"{args.steps} timed steps after {args.warmup} warm-up steps.\n\n"
        "| model | steps/s | s per 1,000 steps |\n|---|---|---|\n" + table + "\n"
    )
    save_results(result, text, args.out, stem)


if __name__ == "__main__":
    main()
