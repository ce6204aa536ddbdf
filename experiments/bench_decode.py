"""Decoding time of each schedule with real streams, on the embedded photographs.

For every image and schedule (hyperprior-only, checkerboard, the paper's 2×2 and 4×4 orders
with dedicated multistage models, and the serial autoregressive model), the image is
encoded once and decoded ``--repeat`` times; the median decoding time of the ŷ stages (what
the schedule changes) is split into context-network and entropy-coding time; ẑ with h_s and
the synthesis g_s, common to all schedules, are reported apart. Network and coding time
depend on the architecture and the number of stages, not on the trained values of the
weights, so dedicated models are used at their initialisation unless trained checkpoints
are given with ``--context NAME=CKPT``.

Every schedule is timed with the context network computing in each of ``--precision``
(default: float32 and bfloat16; bfloat16 rows are named "schedule (bfloat16)"): bfloat16 lets
the batched stages of multistage models run on matrix units (Intel AMX here), while a serial
decoder's matrix–vector products gain nothing from them. The autoregressive / 4×4 ratio is
given per precision and for the fastest decoder of each.

ŷ is coded with ``--coder`` (default rans, orderopt's compiled table coder, with the codec's
default substreams; ``gaussian`` is constriction's per-symbol quantized Gaussian). With
``--device cuda`` the networks run on the GPU (entropy coding stays on the CPU: the coder is
CPU code) and every stage pays the device→host copy its coder needs.

``--coders-only`` times just the entropy coders that every schedule pays, on synthetic
symbols (constriction's range coder, alone and split over 2 threads, and orderopt.rans with
1, 2 and 8 substreams), and writes results/coder_throughput.{json,md}.

Writes results/decode_time.{json,md} (``decode_time_cuda.*`` with --device cuda, and a
``_gaussian`` suffix with --coder gaussian).
    python experiments/bench_decode.py [--repeat 7] [--device cuda] [--coder gaussian]
        [--precision float32 bfloat16]
    python experiments/bench_decode.py --coders-only
    python experiments/bench_decode.py --model CKPT --images DIR --reference NAME  # another model
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata

import constriction
import numba
import numpy as np
import torch
from outputs import save_results
from scipy import special
from timing import median_seconds

from orderopt import coders, container, data, rans, streams
from orderopt import orders as od
from orderopt.context import AutoregressiveContext, MultistageContext
from orderopt.devices import add_device_option, device_name, torch_device
from orderopt.fit import load_context
from orderopt.model import load_model

SCHEDULES = {
    "hyperprior": od.hyperprior_only(),
    "checkerboard": od.checkerboard(),
    "paper 2x2": od.paper_order(2),
    "paper 4x4": od.paper_order(4),
    "autoregressive": None,
}


SYMBOLS, LO, HI = 128 * 48 * 32, -40, 40  # a 768×512 image's ŷ: 128 × 48 × 32


def coder_throughput(n: int, repeat: int, out: str) -> None:
    """Throughput of the entropy coders every schedule pays, and whether threads help: ``n``
    symbols under per-symbol quantized Gaussians, coded by constriction (whole, and as 2
    substreams decoded by 2 threads; and under ONE fixed categorical model, a tabulated coder's
    per-symbol cost) and by orderopt.rans (1, 2 and 8 substreams). Means and scales cover the
    shipped model's range (scales 0.11–8, log-uniform). Writes coder_throughput.{json,md}."""
    rng = np.random.default_rng(0)
    means = rng.normal(0, 2, n)
    stds = np.exp(rng.uniform(np.log(0.11), np.log(8), n))
    symbols = np.clip(np.round(means + stds * rng.normal(size=n)), LO, HI).astype(np.int32)
    gauss = constriction.stream.model.QuantizedGaussian(LO, HI)

    def encode(idx):
        enc = constriction.stream.queue.RangeEncoder()
        enc.encode(symbols[idx], gauss, means[idx], stds[idx])
        return enc.get_compressed()

    whole = np.arange(n)
    halves = np.array_split(whole, 2)
    words, half_words = encode(whole), [encode(h) for h in halves]

    def decode(w, idx):
        out = constriction.stream.queue.RangeDecoder(w).decode(gauss, means[idx], stds[idx])
        assert np.array_equal(out, symbols[idx])

    enc_s = median_seconds(lambda: encode(whole), repeat, warmup=False)
    dec_s = median_seconds(lambda: decode(words, whole), repeat, warmup=False)
    probs = np.diff(special.ndtr((np.arange(LO, HI + 2) - 0.5) / 3.0))
    fixed = constriction.stream.model.Categorical(probs / probs.sum(), perfect=False)
    cat_symbols = np.clip(symbols - LO, 0, HI - LO).astype(np.int32)
    enc = constriction.stream.queue.RangeEncoder()
    enc.encode(cat_symbols, fixed)
    cat_words = enc.get_compressed()
    fixed_s = median_seconds(
        lambda: constriction.stream.queue.RangeDecoder(cat_words).decode(fixed, n), repeat, warmup=False
    )
    with ThreadPoolExecutor(2) as pool:
        threads_s = median_seconds(lambda: list(pool.map(decode, half_words, halves)), repeat, warmup=False)
    rans.prepare()
    stage = [(symbols.astype(np.int64), means, stds)]
    rans_rows = {"encode_s": median_seconds(lambda: rans.encode(stage), repeat)}
    for substreams in (1, 2, 8):
        w = rans.encode(stage, substreams=substreams)
        assert np.array_equal(rans.Decoder(w).decode(means, stds), symbols)
        rans_rows[f"decode_{substreams}_substreams_s"] = median_seconds(
            lambda w=w: rans.Decoder(w).decode(means, stds), repeat
        )
        rans_rows[f"bits_{substreams}_substreams"] = 32 * len(w)
    result = {
        "cpu": platform.processor() or platform.machine(),
        "constriction": metadata.version("constriction"),
        "symbols": n,
        "encode_s": enc_s,
        "decode_s": dec_s,
        "decode_2_substreams_2_threads_s": threads_s,
        "decode_ns_per_symbol": 1e9 * dec_s / n,
        "decode_one_fixed_categorical_s": fixed_s,
        "constriction_bits": 32 * len(words),
        "rans": rans_rows,
        "threads": numba.get_num_threads(),
        "command": "python experiments/bench_decode.py --coders-only"
        + (f" --symbols {n}" if n != SYMBOLS else ""),
    }
    text = (
        f"# Entropy-coder throughput ({result['cpu']})\n\nRegenerate: `{result['command']}`.\n\n"
        f"{n} symbols under per-symbol quantized Gaussians (constriction range coder): encode "
        f"{1e3 * enc_s:.1f} ms, decode {1e3 * dec_s:.1f} ms ({result['decode_ns_per_symbol']:.0f} ns "
        f"per symbol); the same decoded as 2 substreams by 2 threads: {1e3 * threads_s:.1f} ms "
        f"({dec_s / threads_s:.2f}× speed-up). Under one fixed categorical model: decode "
        f"{1e3 * fixed_s:.1f} ms ({1e9 * fixed_s / n:.0f} ns per symbol).\n\n"
        f"orderopt.rans (compiled table-driven rANS, the codec's default; {result['threads']} threads): "
        f"encode {1e3 * rans_rows['encode_s']:.1f} ms; decode "
        + ", ".join(
            f"{1e3 * rans_rows[f'decode_{p}_substreams_s']:.1f} ms with {p} substream{'s' * (p > 1)} "
            f"({1e9 * rans_rows[f'decode_{p}_substreams_s'] / n:.0f} ns per symbol, "
            f"{rans_rows[f'bits_{p}_substreams'] / (32 * len(words)) - 1:+.2%} size against constriction)"
            for p in (1, 2, 8)
        )
        + ".\n"
    )
    save_results(result, text, out, "coder_throughput")
    print(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--repeat",
        type=int,
        help="decodes per image and schedule, the median kept (default 7; with --coders-only: timings "
        "per measurement, default 5)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--context", action="append", default=[], help="NAME=CKPT: trained model for a schedule")
    p.add_argument("--out", default="results", help="output folder")
    p.add_argument("--coder", choices=list(coders.REGISTRY), default="rans", help="ŷ entropy coder")
    p.add_argument(
        "--precision",
        nargs="+",
        choices=list(container.PRECISIONS),
        default=["float32", "bfloat16"],
        help="context-network precisions to time every schedule in",
    )
    add_device_option(p, "cpu", " of the networks")
    p.add_argument(
        "--coders-only",
        action="store_true",
        help="time only the entropy coders on synthetic symbols (results/coder_throughput.*)",
    )
    p.add_argument(
        "--symbols", type=int, default=SYMBOLS, help="symbols coded by --coders-only (default: a 768×512 ŷ)"
    )
    p.add_argument("--model", help="base-model checkpoint (default: the shipped model)")
    p.add_argument("--images", help="image folder (default: the embedded photographs)")
    p.add_argument(
        "--reference",
        default="motorcycle",
        help="the image of the per-image ratios (the *_on_768x512 figures; default motorcycle, the "
        "embedded 768×512 photograph)",
    )
    args = p.parse_args()
    if args.coders_only:
        coder_throughput(args.symbols, args.repeat or 5, args.out)
        return
    args.repeat = args.repeat or 7
    load_start = os.getloadavg()[0]  # other work on the machine slows every schedule alike
    rans.prepare()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch_device(args.device, deterministic=True)
    base, meta = load_model(args.model)
    base.to(device)
    m, c = base.M, 2 * base.M
    given = dict(s.split("=", 1) for s in args.context)
    models = {}
    for name, order in SCHEDULES.items():
        if name in given:
            models[name] = load_context(given[name])
            continue
        model = AutoregressiveContext(m, c) if order is None else MultistageContext(order, m, c)
        kind = "autoregressive" if order is None else "multistage"
        models[name] = (
            model.eval(),
            {"kind": kind, "order": None if order is None else str(order), "hash": f"untrained-{name}"},
        )
    for model, _ in models.values():
        model.to(device)

    def label(name: str, precision: str) -> str:
        return name if precision == "float32" else f"{name} ({precision})"

    timings = [(label(n, p), n, p) for n in models for p in args.precision]
    rows = []
    images = data.load_images(args.images)
    if args.reference not in {im.name for im in images}:
        raise SystemExit(
            f"error: no image {args.reference!r} (--reference) among {[im.name for im in images]}"
        )
    for im in images:
        h, w = im.image.shape[1:]
        encoded = {
            key: streams.encode(
                im.image, base, meta["hash"], *models[name], coder=args.coder, precision=precision
            )
            for key, name, precision in timings
        }
        timed: dict[str, list] = {key: [] for key, _, _ in timings}
        for _ in range(args.repeat):  # schedules take turns, so that the machine's drift hits all alike
            for key, name, _ in timings:
                timed[key].append(streams.decode(encoded[key].stream, base, meta["hash"], *models[name]))
        for key, name, precision in timings:
            enc, runs = encoded[key], timed[key]
            assert torch.equal(runs[0].y_hat, enc.y_hat)
            best = sorted(runs, key=lambda r: r.latent_seconds)[len(runs) // 2]
            rows.append(
                {
                    "image": im.name,
                    "width": w,
                    "height": h,
                    "schedule": key,
                    "precision": precision,
                    "stages": models[name][0].schedule(None, *enc.y_hat.shape[1:]).num_stages,
                    "latent_s": best.latent_seconds,
                    "network_s": best.network_seconds,
                    "coding_s": best.coding_seconds,
                    "hyper_s": best.hyper_seconds,
                    "synthesis_s": best.synthesis_seconds,
                    "decode_s": best.seconds,
                    "bytes": len(enc.stream),
                    "estimated_bits": enc.estimated_bits,
                    "substreams": int(container.unpack(enc.stream)[2][0]) if args.coder == "rans" else None,
                }
            )
            print(
                f"{im.name:12s} {key:26s} ŷ {1e3 * best.latent_seconds:8.1f} ms (network "
                f"{1e3 * best.network_seconds:.1f}, coding {1e3 * best.coding_seconds:.1f}); "
                f"whole decode {1e3 * best.seconds:.1f} ms"
            )
    keys = ("latent_s", "network_s", "coding_s", "hyper_s", "synthesis_s", "decode_s")
    summary = {
        key: {k: statistics.median(x[k] for x in rows if x["schedule"] == key) for k in keys}
        for key, _, _ in timings
    }
    moto = {x["schedule"]: x for x in rows if x["image"] == args.reference}
    ratios = {}
    for p in args.precision:
        ar, k4 = moto[label("autoregressive", p)], moto[label("paper 4x4", p)]
        cb, k2 = summary[label("checkerboard", p)], summary[label("paper 2x2", p)]
        suffix = "" if p == "float32" else f"_{p}"
        ratios |= {
            f"2x2_over_checkerboard{suffix}": k2["latent_s"] / cb["latent_s"],
            f"4x4_over_checkerboard{suffix}": summary[label("paper 4x4", p)]["latent_s"] / cb["latent_s"],
            f"autoregressive_over_4x4_on_768x512{suffix}": ar["latent_s"] / k4["latent_s"],
            f"autoregressive_over_4x4_network_only_on_768x512{suffix}": ar["network_s"] / k4["network_s"],
            # the ceiling of that ratio for any context model: hyperprior-only has no context
            f"autoregressive_over_hyperprior_on_768x512{suffix}": ar["latent_s"]
            / moto[label("hyperprior", p)]["latent_s"],
        }
    fastest = {
        name: min((moto[label(name, p)] for p in args.precision), key=lambda x: x["latent_s"])
        for name in ("autoregressive", "paper 4x4", "hyperprior")
    }
    ratios["autoregressive_over_4x4_on_768x512_fastest"] = (
        fastest["autoregressive"]["latent_s"] / fastest["paper 4x4"]["latent_s"]
    )
    ratios["autoregressive_over_hyperprior_on_768x512_fastest"] = (
        fastest["autoregressive"]["latent_s"] / fastest["hyperprior"]["latent_s"]
    )
    ratios["fastest_precision"] = {name: x["precision"] for name, x in fastest.items()}
    where = device_name("cpu")
    if device.type == "cuda":
        where = f"{device_name(device)} for the networks, entropy coding on the {where}"
    command = (
        "python experiments/bench_decode.py"
        + (f" --device {args.device}" if device.type != "cpu" else "")
        + (f" --coder {args.coder}" if args.coder != "rans" else "")
        + (f" --precision {' '.join(args.precision)}" if args.precision != ["float32", "bfloat16"] else "")
        + (f" --repeat {args.repeat}" if args.repeat != 7 else "")
        + (f" --model {args.model}" if args.model else "")
        + (f" --images {args.images}" if args.images else "")
        + (f" --reference {args.reference}" if args.reference != "motorcycle" else "")
    )
    result = {
        "device": where,
        "torch": torch.__version__,
        "model_hash": meta["hash"],
        "repeat": args.repeat,
        "coder": args.coder,
        "load_average_1min": {"start": load_start, "end": os.getloadavg()[0]},
        "note": "dedicated models at initialisation unless given: timings do not depend on weight values",
        "median_over_images": summary,
        "ratios": ratios,
        "rows": rows,
        "command": command,
    }
    stem = "decode_time" + (f"_{device.type}" if device.type != "cpu" else "")
    stem += f"_{args.coder}" if args.coder != "rans" else ""
    ref = next(im for im in images if im.name == args.reference)
    ph, pw = (-(-n // 64) * 64 for n in ref.image.shape[1:])  # coded padded to multiples of 64
    ref_text = f"{pw}×{ph} (padded) {args.reference}"
    where = f"images in {args.images}" if args.images else "embedded photographs"
    lines = [
        f"| schedule | serial stages ({args.reference}) | ŷ decoding (ms) | context network (ms) | "
        "entropy coding (ms) | ẑ + h_s (ms) | synthesis g_s (ms) | whole decode (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, v in summary.items():
        st = next(x["stages"] for x in rows if x["schedule"] == name and x["image"] == args.reference)
        cells = " | ".join(f"{1e3 * v[k]:.1f}" for k in keys)
        lines.append(f"| {name} | {st} | {cells} |")
    summary_lines = []
    for p in args.precision:
        sx = "" if p == "float32" else f"_{p}"
        summary_lines.append(
            f"{p}: ŷ decoding time, 2×2 / checkerboard: {ratios['2x2_over_checkerboard' + sx]:.2f}×; "
            f"4×4 / checkerboard: {ratios['4x4_over_checkerboard' + sx]:.2f}×; autoregressive / 4×4 on "
            f"the {ref_text}: {ratios['autoregressive_over_4x4_on_768x512' + sx]:.1f}× "
            f"(context network alone: {ratios['autoregressive_over_4x4_network_only_on_768x512' + sx]:.1f}×; "
            f"the ceiling for any context model, autoregressive / hyperprior-only: "
            f"{ratios['autoregressive_over_hyperprior_on_768x512' + sx]:.1f}×)."
        )
    fp = ratios["fastest_precision"]
    summary_lines.append(
        f"The fastest decoder of each (autoregressive in {fp['autoregressive']}, 4×4 in "
        f"{fp['paper 4x4']}): autoregressive / 4×4 on the {args.reference} "
        f"{ratios['autoregressive_over_4x4_on_768x512_fastest']:.1f}× (ceiling, against hyperprior-only "
        f"in {fp['hyperprior']}: {ratios['autoregressive_over_hyperprior_on_768x512_fastest']:.1f}×)."
    )
    text = (
        f"# Decoding time ({result['device']}, torch {result['torch']}, ŷ coder {args.coder})\n\n"
        f"Median over the {where} of the median of {args.repeat} decodes (the schedules "
        "take turns). "
        f"Load average (1 min) {load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end. "
        f"Regenerate: `{result['command']}`. {result['note']}.\n\n"
        + "\n".join(lines)
        + "\n\n"
        + "\n\n".join(summary_lines)
        + "\n"
    )
    save_results(result, text, args.out, stem)
    print(json.dumps(ratios, indent=2))


if __name__ == "__main__":
    main()
