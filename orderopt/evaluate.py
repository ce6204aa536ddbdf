"""Rate and distortion of the base codec (hyperprior only, no spatial context).

    python -m orderopt.evaluate [--images DIR] [--model CKPT] [--out FILE.json] [--recon DIR]

Output JSON, in the style of CompressAI's ``eval_model`` (one quality point, so every
result is a one-element list)::

    {"name": "orderopt-hyperprior", "description": ..., "model_hash": ..., "lmbda": ...,
     "results": {"bpp": [mean], "bpp_y": [...], "bpp_z": [...], "psnr": [mean dB]},
     "images": [{"name", "width", "height", "bpp", "bpp_y", "bpp_z", "psnr"}, ...]}

bpp is measured from the model's likelihoods (ŷ = round(y) under the hyperprior Gaussian, ẑ
under the factorized prior); PSNR on RGB in [0, 255] after cropping the padding away.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import data
from .errors import HelpFormatter, OneLineErrorParser, run_cli
from .files import write_json, write_png
from .model import HyperpriorCodec, add_model_options, check_model_options, gaussian_bits, load_model


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two images in [0, 1], after rounding both to 8 bits."""
    a8, b8 = (a.clamp(0, 1) * 255).round(), (b.clamp(0, 1) * 255).round()
    mse = float(torch.mean((a8 - b8) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] → (H, W, 3) uint8."""
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


@torch.no_grad()
def evaluate_image(model: HyperpriorCodec, image: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """Rates and PSNR of one image, and its reconstruction (3, H, W)."""
    x, size = data.pad_to_multiple(image[None])
    a = model.analyze(x)
    means, scales = model.split_hyper(a.hyper)
    bits_y = float(gaussian_bits(a.y_hat, means, scales).sum())
    recon = data.crop_to(model.synthesize(a.y_hat), size)[0]
    npix = size[0] * size[1]
    bpp_y, bpp_z = bits_y / npix, float(a.z_bits[0]) / npix
    row = {
        "width": size[1],
        "height": size[0],
        "bpp": bpp_y + bpp_z,
        "bpp_y": bpp_y,
        "bpp_z": bpp_z,
        "psnr": psnr(recon, image),
    }
    return row, recon


def evaluate(
    model: HyperpriorCodec, images: list[data.NamedImage], recon_dir: Path | None = None
) -> list[dict]:
    rows = []
    for im in tqdm(images, desc="evaluate", unit="img"):
        row, recon = evaluate_image(model, im.image)
        rows.append({"name": im.name, **row})
        if recon_dir is not None:
            out = recon_dir / (Path(im.name).with_suffix("").as_posix().replace("/", "_") + ".png")
            write_png(to_uint8(recon), out)
    return rows


def summary(rows: list[dict], meta: dict, images: str) -> dict:
    keys = ("bpp", "bpp_y", "bpp_z", "psnr")
    return {
        "name": "orderopt-hyperprior",
        "description": meta.get("description", f"mean-scale hyperprior (no spatial context), {meta['arch']}")
        + f", on {images}",
        "model_hash": meta["hash"],
        "lmbda": meta["lmbda"],
        "results": {k: [float(np.mean([r[k] for r in rows]))] for k in keys},
        "images": rows,
    }


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog="python -m orderopt.evaluate",
        description="Measure bpp and PSNR of the base codec on a folder of images.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--images", help="image folder (default: the embedded scikit-image photographs)")
    add_model_options(p)
    p.add_argument("--out", help="write the JSON here (default: print it)")
    p.add_argument("--recon", help="write reconstructions as PNG into this folder")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_model_options(args)
    model, meta = load_model(args.model, args.quality)
    images = data.load_images(args.images)
    rows = evaluate(model, images, Path(args.recon) if args.recon else None)
    result = summary(rows, meta, args.images or "embedded photographs")
    if args.out:
        write_json(result, Path(args.out))
        r = result["results"]
        print(f"{len(rows)} images: {r['bpp'][0]:.4f} bpp, {r['psnr'][0]:.2f} dB -> {args.out}")
    else:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
