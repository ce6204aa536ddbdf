"""Would a tabulated entropy coder lift the decoding floor? The probe that led to orderopt.rans.

Every schedule pays constriction's per-symbol quantized Gaussian (about 200 ns per decoded
symbol, results/coder_throughput.md). A tabulated coder codes the residual ŷ − round(μ) under
one of S×D categorical tables (σ on a log grid of S levels from SCALE_MIN to 64, the mean's
offset μ − round(μ) in D bins), grouping each stage's symbols by table: ~32 ns per symbol,
plus one coder call per group and the tables a stream uses. This probe codes the 768×512
motorcycle with the paper's 4×4 order under the shipped 4×4 proxy both ways and reports coded
size against the likelihood estimate and decoding time (tables built inside the timing, as a
decoder must). Entropy coding only: the networks are run once, beforehand.

Grouping by table in Python loses the gain to one coder call per group; the last rows code the
same stages with orderopt.rans, which picks the table per symbol inside one compiled call per
stage (its 64×32 tables are built once per process, about 50 ms, outside the timing).

Writes results/tabulated_coder_probe.{json,md}.   python experiments/tabulated_coder_probe.py
"""

from __future__ import annotations

import argparse
import time

import constriction
import numpy as np
import torch
from outputs import save_results
from scipy.special import ndtr
from timing import median_seconds

from orderopt import codec, data, rans
from orderopt import orders as od
from orderopt.fit import load_context
from orderopt.model import SCALE_MIN, load_model, shipped_weights

GRIDS = [(32, 8), (48, 12), (64, 16)]


def stage_gaussians(image: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(symbols, means, stds) of every stage of the paper's 4×4 order, as the codec codes them."""
    base, _ = load_model()
    proxy, _ = load_context(shipped_weights("proxy_k4"))
    with torch.no_grad():
        a = base.analyze(data.pad_to_multiple(image[None])[0])
        sched = codec.make_schedule(proxy, od.paper_order(4), *a.y_hat.shape[2:])
        return list(codec.encoder_stages(sched, a.y_hat, a.hyper, torch.device("cpu")))


class Tables:
    """Categorical tables of N(δ, σ) integrated over integer bins, r ∈ [−R, R], built lazily."""

    def __init__(self, levels: int, offsets: int, radius: int):
        self.scales = np.exp(np.linspace(np.log(SCALE_MIN), np.log(64.0), levels))
        self.step = np.log(self.scales[1] / self.scales[0])
        self.levels, self.offsets, self.radius = levels, offsets, radius
        self.models: dict[int, object] = {}

    def split(self, means: np.ndarray, stds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        centre = np.round(means)
        si = np.clip(np.rint(np.log(stds / SCALE_MIN) / self.step), 0, self.levels - 1).astype(np.int64)
        di = np.clip(np.floor((means - centre + 0.5) * self.offsets), 0, self.offsets - 1).astype(np.int64)
        return centre.astype(np.int64), si * self.offsets + di

    def model(self, i: int):
        if i not in self.models:
            sigma = self.scales[i // self.offsets]
            delta = (i % self.offsets + 0.5) / self.offsets - 0.5
            r = np.arange(-self.radius, self.radius + 1)
            p = np.maximum(ndtr((r + 0.5 - delta) / sigma) - ndtr((r - 0.5 - delta) / sigma), 1e-10)
            self.models[i] = constriction.stream.model.Categorical(p / p.sum(), perfect=False)
        return self.models[i]


def groups(index: np.ndarray):
    """Stable order of a stage's symbols by table, and (table, start, end) of each run."""
    order = np.argsort(index, kind="stable")
    tables, starts = np.unique(index[order], return_index=True)
    ends = np.append(starts[1:], len(order))
    return order, list(zip(tables.tolist(), starts.tolist(), ends.tolist(), strict=True))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image", default="motorcycle", help="embedded photograph to code")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--out", default="results", help="output folder")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    image = {im.name: im.image for im in data.load_images(None)}[args.image]
    stages = stage_gaussians(image)
    estimate = sum(codec.stage_bits(*stage) for stage in stages)
    lo, hi = min(int(s.min()) for s, _, _ in stages), max(int(s.max()) for s, _, _ in stages)
    gauss = constriction.stream.model.QuantizedGaussian(lo, hi)
    enc = constriction.stream.queue.RangeEncoder()
    for s, m, d in stages:
        enc.encode(s.astype(np.int32), gauss, m, d)
    words = enc.get_compressed()
    t = time.perf_counter()
    dec = constriction.stream.queue.RangeDecoder(words)
    for _, m, d in stages:
        dec.decode(gauss, m, d)
    rows = [
        {
            "coder": "quantized Gaussian",
            "bits": 32 * len(words),
            "decode_s": time.perf_counter() - t,
            "groups_per_stage": 1,
        }
    ]
    radius = max(int(np.abs(s - np.round(m)).max()) for s, m, _ in stages)
    for levels, offsets in GRIDS:
        tables, calls = Tables(levels, offsets, radius), 0
        enc = constriction.stream.queue.RangeEncoder()
        for s, m, d in stages:
            centre, index = tables.split(m, d)
            residual = (s - centre + radius).astype(np.int32)
            order, runs = groups(index)
            calls += len(runs)
            for i, a, b in runs:
                enc.encode(residual[order[a:b]], tables.model(i))
        words = enc.get_compressed()
        tables = Tables(levels, offsets, radius)  # the decoder builds its own
        t = time.perf_counter()
        dec = constriction.stream.queue.RangeDecoder(words)
        for s, m, d in stages:
            centre, index = tables.split(m, d)
            order, runs = groups(index)
            out = np.empty(len(order), np.int64)
            for i, a, b in runs:
                out[order[a:b]] = dec.decode(tables.model(i), b - a)
            if not np.array_equal(out + centre - radius, s):
                raise SystemExit("tabulated coder did not round-trip")
        rows.append(
            {
                "coder": f"tables {levels} scales × {offsets} offsets",
                "bits": 32 * len(words),
                "decode_s": time.perf_counter() - t,
                "groups_per_stage": calls / len(stages),
                "tables_built": len(tables.models),
            }
        )
    rans.prepare()
    for substreams in (1, 3):
        words = rans.encode(stages, substreams=substreams)

        def decode_all(words=words) -> list[np.ndarray]:
            dec = rans.Decoder(words)
            return [dec.decode(m, d) for _, m, d in stages]

        out = decode_all()
        if not all(np.array_equal(o, s) for o, (s, _, _) in zip(out, stages, strict=True)):
            raise SystemExit("orderopt.rans did not round-trip")
        rows.append(
            {
                "coder": f"orderopt.rans, 64 scales × 32 offsets, {substreams} substream(s)",
                "bits": 32 * len(words),
                "decode_s": median_seconds(decode_all, 5),
                "groups_per_stage": 1,
            }
        )
    for r in rows:
        r["over_estimate_pct"] = 100 * (r["bits"] / estimate - 1)
    result = {
        "image": args.image,
        "order": str(od.paper_order(4)),
        "symbols": int(sum(len(s) for s, _, _ in stages)),
        "estimate_bits": estimate,
        "radius": radius,
        "rows": rows,
        "command": "python experiments/tabulated_coder_probe.py",
    }
    lines = "\n".join(
        f"| {r['coder']} | {r['bits']} | {r['over_estimate_pct']:+.2f}% | {1e3 * r['decode_s']:.1f} | "
        f"{r.get('groups_per_stage', 0):.0f} |"
        for r in rows
    )
    text = (
        f"# Tabulated entropy coder, probe (ŷ of {args.image}, 4×4 paper order, shipped 4×4 proxy)\n\n"
        f"Regenerate: `{result['command']}`. {result['symbols']} symbols; likelihood estimate "
        f"{estimate:.0f} bits; residual radius {radius}. Decoding time covers entropy decoding only "
        "(and building the tables, except orderopt.rans's; median of 5 for it).\n\n"
        "| coder | coded bits | over the estimate | decode (ms) | coder calls per stage |\n"
        "|---|---|---|---|---|\n" + lines + "\n"
    )
    save_results(result, text, args.out, "tabulated_coder_probe")
    print(text)


if __name__ == "__main__":
    main()
