"""The shipped base model against JPEG (Pillow, 4:2:0) at equal bpp on the embedded photographs.

For every image, JPEG is swept over quality 5..95; its PSNR at the model's bpp is
interpolated on that curve (linear in bpp between the two neighbouring qualities).
Writes results/base_vs_jpeg.{json,md,png}.

    python experiments/base_vs_jpeg.py [--model CKPT] [--images DIR] [--out results]
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from outputs import save_results
from PIL import Image

from orderopt import data
from orderopt.evaluate import evaluate, psnr, summary, to_uint8
from orderopt.model import load_model


def jpeg_curve(image) -> list[tuple[int, float, float]]:
    """(quality, bpp, PSNR) of Pillow JPEG for qualities 5..95."""
    arr = to_uint8(image)
    npix = arr.shape[0] * arr.shape[1]
    out = []
    for q in range(5, 96, 5):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=q)
        dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        out.append((q, 8 * len(buf.getvalue()) / npix, psnr(data.to_tensor(dec), image)))
    return out


def training_table(meta: dict) -> str:
    """The validation history recorded in the checkpoint (BSDS500 val, whole images)."""
    hist = meta["training"].get("validation", [])
    if not hist:
        return ""
    rows = "\n".join(f"| {h['step']} | {h['bpp']:.3f} | {h['psnr']:.2f} |" for h in hist)
    return (
        "## Training\n\nValidation during training (first 24 BSDS500 val images, bpp from the "
        "likelihoods):\n\n| step | bpp | PSNR (dB) |\n|---|---|---|\n" + rows + "\n"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="base-model checkpoint (default: shipped)")
    p.add_argument("--images", help="image folder (default: embedded photographs)")
    p.add_argument("--out", default="results", help="output folder")
    args = p.parse_args()
    model, meta = load_model(args.model)
    images = data.load_images(args.images)
    rows = evaluate(model, images)
    result = summary(rows, meta, args.images or "embedded photographs")
    fig, axes = plt.subplots(1, len(images), figsize=(4 * len(images), 3.6), squeeze=False)
    for row, im, ax in zip(rows, images, axes[0], strict=True):
        curve = jpeg_curve(im.image)
        bpps, psnrs = [c[1] for c in curve], [c[2] for c in curve]
        row["jpeg_psnr_at_equal_bpp"] = (
            float(np.interp(row["bpp"], bpps, psnrs)) if bpps[0] <= row["bpp"] else None
        )
        row["jpeg_bpp_at_equal_psnr"] = (
            float(np.interp(row["psnr"], psnrs, bpps)) if psnrs[0] <= row["psnr"] else None
        )
        row["psnr_gain_db"] = (
            None if row["jpeg_psnr_at_equal_bpp"] is None else row["psnr"] - row["jpeg_psnr_at_equal_bpp"]
        )
        row["jpeg_curve"] = [{"quality": q, "bpp": b, "psnr": s} for q, b, s in curve]
        ax.plot(bpps, psnrs, "o-", ms=3, label="JPEG (Pillow, q 5–95)")
        ax.plot([row["bpp"]], [row["psnr"]], "r*", ms=12, label="orderopt base model")
        ax.set_title(im.name)
        ax.set_xlabel("rate (bits per pixel)")
        ax.set_ylabel("PSNR (dB, RGB)")
        ax.set_xlim(0, max(1.5, row["bpp"] * 2))
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle("Shipped hyperprior model against JPEG on the embedded photographs (held out)")
    fig.tight_layout()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "base_vs_jpeg.png", dpi=110)
    gains = [r["psnr_gain_db"] for r in rows if r["psnr_gain_db"] is not None]
    result["results"]["psnr_gain_over_jpeg_db"] = [float(np.mean(gains))] if gains else [None]
    result["command"] = "python experiments/base_vs_jpeg.py"
    lines = [
        "| image | bpp | PSNR (dB) | JPEG PSNR at equal bpp | gain (dB) | JPEG bpp at equal PSNR |",
        "|---|---|---|---|---|---|",
    ]

    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    for r in rows:
        lines.append(
            f"| {r['name']} | {r['bpp']:.3f} | {r['psnr']:.2f} | {fmt(r['jpeg_psnr_at_equal_bpp'], '.2f')} | "
            f"{fmt(r['psnr_gain_db'], '+.2f')} | {fmt(r['jpeg_bpp_at_equal_psnr'], '.3f')} |"
        )
    m = result["results"]
    lines.append(
        f"| **mean** | {m['bpp'][0]:.3f} | {m['psnr'][0]:.2f} | | "
        f"{fmt(float(np.mean(gains)) if gains else None, '+.2f')} | |"
    )
    text = (
        f"# Base model against JPEG\n\nModel hash `{meta['hash']}`, λ = {meta['lmbda']}, "
        f"{meta['training']['steps']} training steps on BSDS500 train+test.\n"
        "Regenerate: `python experiments/base_vs_jpeg.py`.\n\n" + "\n".join(lines) + "\n\n"
        "![RD](base_vs_jpeg.png)\n\n" + training_table(meta)
    )
    save_results(result, text, out, "base_vs_jpeg")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
