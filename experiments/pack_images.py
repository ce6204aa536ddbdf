"""Packs training photographs small enough to travel to a remote GPU machine (64 MiB limit).

Each image is re-encoded as WebP at ``--quality``; images whose shorter side exceeds
``--max-side`` are first downscaled to it (training draws crops downscaled by a random factor
in [0.5, 1] anyway, which hides the re-encoding). Folder structure is kept.

    python experiments/pack_images.py --out .gpudata/train --max-side 500 \
        ../shared/datasets/bsds500/train ../shared/datasets/bsds500/test \
        ../shared/datasets/sun_hays80 ../shared/datasets/urban100
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from orderopt.data import find_images


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", help="image folders")
    p.add_argument("--out", required=True, help="output folder (one subfolder per input folder)")
    p.add_argument("--quality", type=int, default=90, help="WebP quality (default 90)")
    p.add_argument("--max-side", type=int, default=0, help="downscale to this shorter side (0: never)")
    args = p.parse_args()
    total = 0
    for folder in args.folders:
        dest = Path(args.out) / Path(folder).name
        dest.mkdir(parents=True, exist_ok=True)
        for path in find_images(folder):
            img = Image.open(path).convert("RGB")
            short = min(img.size)
            if args.max_side and short > args.max_side:
                f = args.max_side / short
                img = img.resize((round(img.width * f), round(img.height * f)), Image.LANCZOS)
            target = dest / (path.stem + ".webp")
            img.save(target, "WEBP", quality=args.quality, method=6)
            total += target.stat().st_size
    print(f"{total / 2**20:.1f} MiB in {args.out}")


if __name__ == "__main__":
    main()
