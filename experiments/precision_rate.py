"""What a bfloat16 context network costs in rate, and how close real streams come to the likelihoods.

The codec's ``--precision bfloat16`` runs the context network's matrix products in bfloat16
(8 significant bits), which makes the batched stages of multistage models several times
faster on matrix units but perturbs the Gaussian parameters the coder uses. This codes every
embedded photograph (held out from training) with trained context models in both precisions
and reports the ŷ + ẑ payload of each stream against the float32 one:

- the shipped autoregressive model;
- the shipped any-order proxies along the checkerboard and the paper's 2×2 and 4×4 orders;
- a dedicated multistage model of the paper's 4×4 order initialised from the shipped 4×4
  proxy (``init_from_proxy``: the proxy evaluated along the order, away from the borders),
  the form whose stages ``DecodingState`` computes.

Every stream is decoded again and must reproduce ŷ exactly. Writes
results/precision_rate.{json,md}.   python experiments/precision_rate.py [--images DIR]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from outputs import save_results

from orderopt import container, data, rans, streams
from orderopt import orders as od
from orderopt.context import MultistageContext, init_from_proxy
from orderopt.devices import device_name
from orderopt.fit import load_context
from orderopt.model import load_model, shipped_weights


def contexts(m: int, c: int) -> list[tuple[str, object, dict, od.DecodingOrder | None]]:
    """(label, model, metadata, order for the proxy) of every trained context model coded."""
    ar, ar_meta = load_context(shipped_weights("autoregressive"))
    p2, p2_meta = load_context(shipped_weights("proxy_k2"))
    p4, p4_meta = load_context(shipped_weights("proxy_k4"))
    dedicated = MultistageContext(od.paper_order(4), m, c)
    with torch.no_grad():
        init_from_proxy(dedicated, p4)
    d_meta = {"kind": "multistage", "order": str(dedicated.order), "hash": f"from-proxy-{p4_meta['hash']}"}
    return [
        ("autoregressive", ar, ar_meta, None),
        ("proxy checkerboard", p2, p2_meta, od.checkerboard()),
        ("proxy paper 2x2", p2, p2_meta, od.paper_order(2)),
        ("proxy paper 4x4", p4, p4_meta, od.paper_order(4)),
        ("multistage paper 4x4 (from the proxy)", dedicated.eval(), d_meta, None),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="results", help="output folder (default: results)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    p.add_argument("--images", help="image folder (default: the embedded photographs)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rans.prepare()
    base, meta = load_model()
    images = data.load_images(args.images)
    rows = []
    for label, model, cmeta, order in contexts(base.M, 2 * base.M):
        for im in images:
            sizes = {}
            for precision in container.PRECISIONS:
                enc = streams.encode(im.image, base, meta["hash"], model, cmeta, order, precision=precision)
                dec = streams.decode(enc.stream, base, meta["hash"], model, cmeta)
                assert torch.equal(dec.y_hat, enc.y_hat), (label, im.name, precision)
                sizes[precision] = (*container.sizes(enc.stream), enc.estimated_bits)
            gauss_bits, gauss_header = container.sizes(
                streams.encode(im.image, base, meta["hash"], model, cmeta, order, coder="gaussian").stream
            )
            (b32, header_bytes, e32), (b16, _, e16) = sizes["float32"], sizes["bfloat16"]
            rows.append(
                {
                    "context": label,
                    "image": im.name,
                    "pixels": im.num_pixels,
                    "payload_bits_float32": b32,
                    "payload_bits_bfloat16": b16,
                    "estimated_bits_float32": e32,
                    "estimated_bits_bfloat16": e16,
                    "change_percent": 100 * (b16 / b32 - 1),
                    "estimate_change_percent": 100 * (e16 / e32 - 1),
                    # how close real streams come to the likelihoods (float32), with each ŷ coder
                    "rans_over_estimate_percent": 100 * (b32 / e32 - 1),
                    "gaussian_over_estimate_percent": 100 * (gauss_bits / e32 - 1),
                    "header_bytes_rans": header_bytes,
                    "header_bytes_gaussian": gauss_header,
                }
            )
            last = rows[-1]
            print(
                f"{label:40s} {im.name:12s} {b32 / im.num_pixels:.4f} → {b16 / im.num_pixels:.4f} bpp "
                f"({last['change_percent']:+.3f}%, estimate {last['estimate_change_percent']:+.4f}%)"
            )
    labels = list(dict.fromkeys(r["context"] for r in rows))
    summary: dict[str, dict] = {}
    for label in labels:
        summary[label] = {}
        for key in (
            "change_percent",
            "estimate_change_percent",
            "rans_over_estimate_percent",
            "gaussian_over_estimate_percent",
            "header_bytes_rans",
            "header_bytes_gaussian",
        ):
            ch = [r[key] for r in rows if r["context"] == label]
            summary[label][key] = {"median": statistics.median(ch), "min": min(ch), "max": max(ch)}
    result = {
        "device": device_name("cpu"),
        "torch": torch.__version__,
        "model_hash": meta["hash"],
        "summary": summary,
        "rows": rows,
        "command": "python experiments/precision_rate.py"
        + (f" --images {args.images}" if args.images else ""),
    }

    def cell(v: dict, digits: int) -> str:
        return f"{v['median']:+.{digits}f}% ({v['min']:+.{digits}f}%, {v['max']:+.{digits}f}%)"

    lines = [
        "| context model | stream payload | likelihood estimate |",
        "|---|---|---|",
        *(
            f"| {k} | {cell(v['change_percent'], 3)} | {cell(v['estimate_change_percent'], 4)} |"
            for k, v in summary.items()
        ),
    ]
    size_lines = [
        "| context model | rans payload over the estimate | gaussian payload over the estimate | "
        "header bytes (rans, gaussian) |",
        "|---|---|---|---|",
        *(
            f"| {k} | {cell(v['rans_over_estimate_percent'], 3)} | "
            f"{cell(v['gaussian_over_estimate_percent'], 3)} | "
            f"{v['header_bytes_rans']['min']:.0f}–{v['header_bytes_rans']['max']:.0f}, "
            f"{v['header_bytes_gaussian']['min']:.0f}–{v['header_bytes_gaussian']['max']:.0f} |"
            for k, v in summary.items()
        ),
    ]
    text = (
        f"# Rate of a bfloat16 context network ({result['device']}, torch {result['torch']})\n\n"
        "Real streams (ŷ and ẑ payload, rANS) of the "
        + (
            f"images in {args.images}"
            if args.images
            else "embedded photographs, which no model was trained on"
        )
        + ", coded with the context network in float32 and in bfloat16; every stream "
        "decodes to the same ŷ. Change of bfloat16 against float32, median (min, max) over the "
        "images; the payload moves in whole 32-bit words, the likelihood estimate (bits of ŷ and ẑ "
        f"under the same Gaussians) does not. Regenerate: `{result['command']}`.\n\n"
        + "\n".join(lines)
        + "\n\n## Stream size against the likelihoods\n\n"
        "The float32 streams' ŷ + ẑ payload against the likelihood estimate of the same Gaussians, "
        "with each ŷ coder (rans: orderopt's table coder with its default substreams; gaussian: "
        "constriction's quantized Gaussian), median (min, max) over the images, and the container "
        "header's bytes (range over the images).\n\n" + "\n".join(size_lines) + "\n"
    )
    save_results(result, text, args.out, "precision_rate")


if __name__ == "__main__":
    main()
