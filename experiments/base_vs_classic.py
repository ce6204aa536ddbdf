"""The shipped base models (three qualities) against JPEG, WebP and JPEG 2000 (Pillow).

For every image of every set, each classic codec is swept over its quality setting; our
models give one point per quality (bpp from the likelihoods, PSNR on 8-bit RGB, as
``orderopt.evaluate``). Two comparisons, each per image and then over the images of a set:

- ΔPSNR at equal bpp: the classic codec's PSNR at our bpp, interpolated on its curve (linear
  in log bpp); mean over images with a 95% bootstrap interval (images resampled);
- BD-rate of our three points against each codec (the ``bjontegaard`` package, Akima
  interpolation, on each set's mean curve), negative when ours needs fewer bits.

Writes OUT/base_vs_classic.{json,md,png}.

    python experiments/base_vs_classic.py [--set NAME=DIR ...] [--limit N] [--out results]

Sets default to the embedded photographs, BSDS500 val and wikiphotos from
../shared/datasets (each held out from training).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import bjontegaard as bd
import matplotlib.pyplot as plt
import numpy as np
from outputs import save_results
from PIL import Image
from tqdm import tqdm

from orderopt import data
from orderopt.evaluate import evaluate_image, psnr, to_uint8
from orderopt.model import QUALITIES, load_model

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
DEFAULT_SETS = {
    "embedded": None,
    "bsds500-val": SHARED / "bsds500" / "val",
    "wikiphotos": SHARED / "wikiphotos",
}
# quality settings swept per codec (Pillow's own scales)
SWEEPS = {
    "JPEG": list(range(5, 96, 10)),
    "WebP": list(range(0, 101, 10)),
    "JPEG 2000": [400, 200, 120, 80, 60, 40, 30, 20, 12, 8],  # compression ratios
}


def classic_point(arr: np.ndarray, image, codec: str, setting: int) -> tuple[float, float]:
    """(bpp, PSNR) of one encoding of ``arr`` (H, W, 3 uint8) by a classic codec."""
    buf = io.BytesIO()
    pil = Image.fromarray(arr)
    if codec == "JPEG":
        pil.save(buf, format="JPEG", quality=setting)
    elif codec == "WebP":
        pil.save(buf, format="WEBP", quality=setting)
    else:
        pil.save(
            buf, format="JPEG2000", quality_mode="rates", quality_layers=[setting], irreversible=True, mct=1
        )
    dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return 8 * len(buf.getvalue()) / (arr.shape[0] * arr.shape[1]), psnr(data.to_tensor(dec), image)


def psnr_at(curve: list[tuple[float, float]], bpp: float) -> float | None:
    """PSNR of a (bpp, PSNR) curve at ``bpp`` (linear in log bpp), None outside the curve."""
    pts = sorted(curve)
    xs, ys = np.log([p[0] for p in pts]), [p[1] for p in pts]
    x = math.log(bpp)
    return float(np.interp(x, xs, ys)) if xs[0] <= x <= xs[-1] else None


def bootstrap_ci(values: list[float], draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    v = np.asarray(values)
    if len(v) < 2:
        return float("nan"), float("nan")
    means = v[np.random.default_rng(seed).integers(0, len(v), (draws, len(v)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def bd_rate(anchor: list[tuple[float, float]], test: list[tuple[float, float]]) -> float | None:
    """BD-rate (%) of ``test`` against ``anchor`` over their common PSNR range (None without one)."""
    a, t = sorted(anchor, key=lambda p: p[1]), sorted(test, key=lambda p: p[1])
    lo, hi = max(a[0][1], t[0][1]), min(a[-1][1], t[-1][1])
    if hi <= lo or len(a) < 2 or len(t) < 2:
        return None
    ra, da = zip(*a, strict=True)
    rt, dt = zip(*t, strict=True)
    return float(
        bd.bd_rate(
            list(ra),
            list(da),
            list(rt),
            list(dt),
            method="akima",
            require_matching_points=False,
            min_overlap=0,
        )
    )


def measure_set(models: dict, images: list[data.NamedImage]) -> list[dict]:
    rows = []
    for im in tqdm(images, desc="images", unit="img"):
        arr = to_uint8(im.image)
        row = {"name": im.name, "ours": [], "classic": {}}
        for q, (model, _) in models.items():
            r, _ = evaluate_image(model, im.image)
            row["ours"].append({"quality": q, "bpp": r["bpp"], "psnr": r["psnr"]})
        for codec, settings in SWEEPS.items():
            row["classic"][codec] = [
                {
                    "setting": s,
                    **dict(zip(("bpp", "psnr"), classic_point(arr, im.image, codec, s), strict=True)),
                }
                for s in settings
            ]
        rows.append(row)
    return rows


def summarize(rows: list[dict]) -> dict:
    """Per quality and codec: mean ΔPSNR at equal bpp (with interval); per codec: BD-rate."""
    out = {"ours_mean": [], "delta_psnr": {}, "bd_rate_pct": {}, "classic_mean": {}}
    for i, q in enumerate(QUALITIES):
        pts = [r["ours"][i] for r in rows]
        out["ours_mean"].append(
            {
                "quality": q,
                "bpp": float(np.mean([p["bpp"] for p in pts])),
                "psnr": float(np.mean([p["psnr"] for p in pts])),
            }
        )
    ours_curve = [(p["bpp"], p["psnr"]) for p in out["ours_mean"]]
    for codec in SWEEPS:
        mean_curve = [
            (
                float(np.mean([r["classic"][codec][j]["bpp"] for r in rows])),
                float(np.mean([r["classic"][codec][j]["psnr"] for r in rows])),
            )
            for j in range(len(SWEEPS[codec]))
        ]
        out["classic_mean"][codec] = mean_curve
        out["bd_rate_pct"][codec] = bd_rate(mean_curve, ours_curve)
        per_q = []
        for i, q in enumerate(QUALITIES):
            gains = []
            for r in rows:
                ref = psnr_at([(c["bpp"], c["psnr"]) for c in r["classic"][codec]], r["ours"][i]["bpp"])
                if ref is not None:
                    gains.append(r["ours"][i]["psnr"] - ref)
            lo, hi = bootstrap_ci(gains)
            per_q.append(
                {
                    "quality": q,
                    "mean_db": float(np.mean(gains)) if gains else None,
                    "ci95": [lo, hi],
                    "images": len(gains),
                }
            )
        out["delta_psnr"][codec] = per_q
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--set",
        action="append",
        metavar="NAME=DIR",
        help="an image set (repeatable; default: embedded, bsds500-val and wikiphotos)",
    )
    p.add_argument("--limit", type=int, default=0, help="at most this many images per set (default 0: all)")
    p.add_argument("--out", default="results", help="output folder (default results)")
    p.add_argument("--stem", default="base_vs_classic", help="output file stem (default base_vs_classic)")
    p.add_argument(
        "--summarize",
        metavar="JSON",
        help="recompute the summaries, table and figure from the per-image points of an earlier run's JSON",
    )
    args = p.parse_args()
    earlier = json.loads(Path(args.summarize).read_text()) if args.summarize else None
    if earlier:
        sets = {name: None for name in earlier["sets"]}
    else:
        sets = (
            {k: (Path(v) if v != "embedded" else None) for k, v in (s.split("=", 1) for s in args.set)}
            if args.set
            else DEFAULT_SETS
        )
    models = {q: load_model(quality=q) for q in QUALITIES}
    result = {
        "command": " ".join(["python experiments/base_vs_classic.py", *sys.argv[1:]]),
        "models": {q: {"hash": m[1]["hash"], "lmbda": m[1]["lmbda"]} for q, m in models.items()},
        "sweeps": SWEEPS,
        "sets": {},
    }
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 4), squeeze=False)
    lines = []
    for (name, folder), ax in zip(sets.items(), axes[0], strict=True):
        if earlier:
            rows = earlier["sets"][name]["per_image"]
        else:
            images = data.load_images(folder)
            if args.limit:
                images = images[: args.limit]
            rows = measure_set(models, images)
        s = summarize(rows)
        result["sets"][name] = {"images": len(rows), "summary": s, "per_image": rows}
        for codec, curve in s["classic_mean"].items():
            xs, ys = zip(*sorted(curve), strict=True)
            ax.plot(xs, ys, "o-", ms=3, label=codec)
        ax.plot(
            [p["bpp"] for p in s["ours_mean"]],
            [p["psnr"] for p in s["ours_mean"]],
            "k*-",
            ms=10,
            label="orderopt base (q1–q3)",
        )
        ax.set(
            title=f"{name} ({len(rows)} images)",
            xlabel="rate (bits per pixel)",
            ylabel="PSNR (dB, RGB)",
            xlim=(0, 1.3),
        )
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        lines += [
            f"## {name} ({len(rows)} images)",
            "",
            "| quality | bpp | PSNR (dB) | "
            + " | ".join(f"ΔPSNR vs {c} (dB, 95% CI)" for c in SWEEPS)
            + " |",
            "|---|---|---|" + "---|" * len(SWEEPS),
        ]
        for i, pt in enumerate(s["ours_mean"]):
            cells = []
            for codec in SWEEPS:
                d = s["delta_psnr"][codec][i]
                cells.append(
                    "-"
                    if d["mean_db"] is None
                    else f"{d['mean_db']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}] (n={d['images']})"
                )
            lines.append(
                f"| q{pt['quality']} | {pt['bpp']:.3f} | {pt['psnr']:.2f} | " + " | ".join(cells) + " |"
            )
        bds = ", ".join(f"{c} {'-' if v is None else f'{v:+.1f}%'}" for c, v in s["bd_rate_pct"].items())
        lines += ["", f"BD-rate of the three qualities (mean curves, Akima): {bds}.", ""]
    fig.suptitle("Shipped base models (hyperprior only) against classic codecs, held-out photographs")
    fig.tight_layout()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / f"{args.stem}.png", dpi=110)
    hashes = ", ".join(f"q{q} `{m['hash']}` (λ = {m['lmbda']})" for q, m in result["models"].items())
    text = (
        "# Base models against JPEG, WebP and JPEG 2000\n\n"
        f"Models: {hashes}. Classic codecs: Pillow {Image.__version__} (JPEG 4:2:0, WebP at its "
        "default method 4, OpenJPEG 9/7 with the colour transform at fixed compression ratios). "
        "Our bpp is from the likelihoods; PSNR on 8-bit RGB. "
        "ΔPSNR > 0: ours is better at equal bpp.\n"
        f"Regenerate: `{result['command']}`.\n\n" + "\n".join(lines) + f"\n![RD]({args.stem}.png)\n"
    )
    save_results(result, text, out, args.stem)
    print(text)


if __name__ == "__main__":
    main()
