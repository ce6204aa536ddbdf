"""Decoding time of each schedule with real streams, on the embedded photographs.

For every image and schedule (hyperprior-only, checkerboard, the paper's 2×2 and 4×4 orders
with dedicated multistage models, and the serial autoregressive model), the image is
encoded once and decoded ``--repeat`` times; the median decoding time of the ŷ stages (what
the schedule changes) is split into context-network and entropy-coding time; ẑ with h_s and
the synthesis g_s, common to all schedules, are reported apart. Network and coding time
depend on the architecture and the number of stages, not on the trained values of the
weights, so dedicated models are used at their initialisation unless trained checkpoints
are given with ``--context NAME=CKPT``.

ŷ is coded with ``--coder`` (default rans, orderopt's compiled table coder, with the codec's
default substreams; ``gaussian`` is constriction's per-symbol quantized Gaussian). With
``--device cuda`` the networks run on the GPU (entropy coding stays on the CPU: the coder is
CPU code) and every stage pays the device→host copy its coder needs.

Writes results/decode_time.{json,md} (``decode_time_cuda.*`` with --device cuda, and a
``_gaussian`` suffix with --coder gaussian).
    python experiments/bench_decode.py [--repeat 7] [--device cuda] [--coder gaussian]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from orderopt import codec, data, rans
from orderopt import orders as od
from orderopt.context import AutoregressiveContext, MultistageContext
from orderopt.devices import add_device_option, device_name, torch_device
from orderopt.files import atomic_write, write_json
from orderopt.fit import load_context
from orderopt.model import load_model

SCHEDULES = {
    "hyperprior": od.hyperprior_only(),
    "checkerboard": od.checkerboard(),
    "paper 2x2": od.paper_order(2),
    "paper 4x4": od.paper_order(4),
    "autoregressive": None,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=7, help="decodes per image and schedule (median)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--context", action="append", default=[], help="NAME=CKPT: trained model for a schedule")
    p.add_argument("--out", default="results", help="output folder")
    p.add_argument("--coder", choices=codec.CODERS, default="rans", help="ŷ entropy coder")
    add_device_option(p, "cpu", " of the networks")
    args = p.parse_args()
    rans.prepare()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch_device(args.device, deterministic=True)
    base, meta = load_model()
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
    rows = []
    for im in data.load_images(None):
        h, w = im.image.shape[1:]
        encoded = {
            name: codec.encode(im.image, base, meta["hash"], model, cmeta, coder=args.coder)
            for name, (model, cmeta) in models.items()
        }
        timed: dict[str, list] = {name: [] for name in models}
        for _ in range(args.repeat):  # schedules take turns, so that the machine's drift hits all alike
            for name, (model, cmeta) in models.items():
                timed[name].append(codec.decode(encoded[name].stream, base, meta["hash"], model, cmeta))
        for name, (model, _) in models.items():
            enc, runs = encoded[name], timed[name]
            assert torch.equal(runs[0].y_hat, enc.y_hat)
            best = sorted(runs, key=lambda r: r.latent_seconds)[len(runs) // 2]
            rows.append(
                {
                    "image": im.name,
                    "width": w,
                    "height": h,
                    "schedule": name,
                    "stages": codec.make_schedule(model, None, *enc.y_hat.shape[1:]).num_stages,
                    "latent_s": best.latent_seconds,
                    "network_s": best.network_seconds,
                    "coding_s": best.coding_seconds,
                    "hyper_s": best.hyper_seconds,
                    "synthesis_s": best.synthesis_seconds,
                    "decode_s": best.seconds,
                    "bytes": len(enc.stream),
                    "substreams": int(codec.unpack(enc.stream)[2][0]) if args.coder == "rans" else None,
                }
            )
            print(
                f"{im.name:12s} {name:15s} ŷ {1e3 * best.latent_seconds:8.1f} ms (network "
                f"{1e3 * best.network_seconds:.1f}, coding {1e3 * best.coding_seconds:.1f}); "
                f"whole decode {1e3 * best.seconds:.1f} ms"
            )
    keys = ("latent_s", "network_s", "coding_s", "hyper_s", "synthesis_s", "decode_s")
    summary = {
        name: {k: statistics.median(x[k] for x in rows if x["schedule"] == name) for k in keys}
        for name in SCHEDULES
    }
    moto = {x["schedule"]: x["latent_s"] for x in rows if x["image"] == "motorcycle"}
    moto_net = {x["schedule"]: x["network_s"] for x in rows if x["image"] == "motorcycle"}
    ratios = {
        "2x2_over_checkerboard": summary["paper 2x2"]["latent_s"] / summary["checkerboard"]["latent_s"],
        "4x4_over_checkerboard": summary["paper 4x4"]["latent_s"] / summary["checkerboard"]["latent_s"],
        "autoregressive_over_4x4_on_768x512": moto["autoregressive"] / moto["paper 4x4"],
        "autoregressive_over_4x4_network_only_on_768x512": moto_net["autoregressive"] / moto_net["paper 4x4"],
    }
    where = device_name("cpu")
    if device.type == "cuda":
        where = f"{device_name(device)} for the networks, entropy coding on the {where}"
    command = (
        "python experiments/bench_decode.py"
        + (f" --device {args.device}" if device.type != "cpu" else "")
        + (f" --coder {args.coder}" if args.coder != "rans" else "")
    )
    result = {
        "device": where,
        "torch": torch.__version__,
        "model_hash": meta["hash"],
        "repeat": args.repeat,
        "coder": args.coder,
        "note": "dedicated models at initialisation unless given: timings do not depend on weight values",
        "median_over_images": summary,
        "ratios": ratios,
        "rows": rows,
        "command": command,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "decode_time" + (f"_{device.type}" if device.type != "cpu" else "")
    stem += f"_{args.coder}" if args.coder != "rans" else ""
    write_json(result, out / f"{stem}.json")
    lines = [
        "| schedule | serial stages (motorcycle) | ŷ decoding (ms) | context network (ms) | "
        "entropy coding (ms) | ẑ + h_s (ms) | synthesis g_s (ms) | whole decode (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, v in summary.items():
        st = next(x["stages"] for x in rows if x["schedule"] == name and x["image"] == "motorcycle")
        cells = " | ".join(f"{1e3 * v[k]:.1f}" for k in keys)
        lines.append(f"| {name} | {st} | {cells} |")
    text = (
        f"# Decoding time ({result['device']}, torch {result['torch']}, ŷ coder {args.coder})\n\n"
        f"Median over the embedded photographs of the median of {args.repeat} decodes (the schedules "
        "take turns). "
        f"Regenerate: `{result['command']}`. {result['note']}.\n\n" + "\n".join(lines) + "\n\n"
        f"ŷ decoding time, 2×2 / checkerboard: {ratios['2x2_over_checkerboard']:.2f}×; "
        f"4×4 / checkerboard: {ratios['4x4_over_checkerboard']:.2f}×; autoregressive / 4×4 on the "
        f"768×512 (padded) motorcycle: {ratios['autoregressive_over_4x4_on_768x512']:.1f}× "
        f"(context network alone: {ratios['autoregressive_over_4x4_network_only_on_768x512']:.1f}×).\n"
    )
    atomic_write(out / f"{stem}.md", lambda tmp: tmp.write_text(text))
    print(json.dumps(ratios, indent=2))


if __name__ == "__main__":
    main()
