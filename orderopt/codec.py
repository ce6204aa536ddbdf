"""Real bitstreams from the command line: encode an image, decode a stream.

    python -m orderopt.codec encode IMAGE OUT.oopt (--order "0,1;2,3" | --kind autoregressive)
    python -m orderopt.codec decode IN.oopt OUT.png
    (either with --device cuda: the networks on a GPU, entropy coding on the CPU; encode with
    --precision bfloat16: the context network in bfloat16, on matrix units where there are any)

Context models: a dedicated multistage or autoregressive model (``--context CKPT``), or the
any-order proxy for any order (the shipped proxy of the order's patch size by default).
Checkerboard is ``--order 0,1;1,0`` and hyperprior-only ``--order 0``. ŷ is coded with
``--coder rans`` (default) or ``gaussian``, or, for context models of Gaussian mixtures
(trained with ``--mixture K``), ``mixture`` (their default) (:mod:`orderopt.coders`).

The encoder and decoder are :mod:`orderopt.streams`, the container format
:mod:`orderopt.container`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import coders, data, rans
from . import orders as od
from .container import PRECISIONS, sizes, unpack
from .devices import add_device_option, parse_kernels, pin_kernels, torch_device
from .errors import HelpFormatter, OneLineErrorParser, UserError, number, run_cli
from .evaluate import to_uint8
from .files import write_bytes, write_png
from .fit import load_context, shipped_name
from .model import add_model_options, check_model_options, load_model, shipped_quality, shipped_weights
from .streams import decode, encode


# --- command line ----------------------------------------------------------------------------
def context_for(args, order: od.DecodingOrder | None, header: dict | None = None, quality: int | None = None):
    """The context model: --context, else the shipped model (of ``quality``) the stream or the
    order needs."""
    if args.context:
        return load_context(args.context)
    recorded = (header or {}).get("context", {})
    kind = recorded.get("kind") or ("autoregressive" if args.kind else "anyorder")
    if kind == "multistage":
        raise UserError("this stream was coded with a dedicated multistage model; pass it as --context")
    mixture = int(recorded.get("mixture", 1) if header else args.mixture)
    patch = recorded.get("patch") or (4 if order is not None and order.patch == 4 else 2)
    path = shipped_weights(shipped_name(kind, patch, mixture), quality)
    if not path.is_file():
        raise UserError(f"no shipped context model {path.name}; pass --context CKPT")
    return load_context(path)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog="python -m orderopt.codec",
        description="Encode or decode an image with a "
        "multistage (or autoregressive) context model and an entropy coder.",
        formatter_class=HelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("encode", help="image -> stream", formatter_class=HelpFormatter)
    e.add_argument("image", help="input image (PNG, JPEG, ...)")
    e.add_argument("out", help="output stream file")
    e.add_argument("--order", help="decoding order, e.g. '0,1;2,3' (checkerboard '0,1;1,0', hyperprior '0')")
    e.add_argument("--kind", choices=["autoregressive"], help="code with the autoregressive model instead")
    e.add_argument(
        "--coder",
        choices=list(coders.REGISTRY),
        help="ŷ entropy coder: rans (compiled tables, fast) or gaussian (constriction, per symbol) for "
        "Gaussian context models; mixture (constriction, per-symbol tables) for any, Gaussian mixtures "
        "included (default: rans, or mixture for a context model of mixtures)",
    )
    e.add_argument(
        "--substreams",
        type=int,
        help="rANS substreams, decodable in parallel, 12 bytes each (default: one per 64k symbols "
        "of stages large enough for threads, at most 16)",
    )
    e.add_argument(
        "--mixture",
        type=number(at_least=1),
        default=1,
        help="code with the shipped context model of this many Gaussian-mixture components (1, or 3 "
        "where one is shipped: the quality-2 proxies); --context takes its own",
    )
    e.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default="float32",
        help="arithmetic of the context network; bfloat16 runs the batched stages of multistage "
        "models on matrix units (Intel AMX, tensor cores) several times faster, at a small rate cost "
        "(see the README), and is slower without them; the decoder uses what the stream records. "
        "float32 streams are coded with torch's CPU kernels capped at AVX2 (ATEN_CPU_CAPABILITY, "
        "ONEDNN_MAX_CPU_ISA, MKL_CBWR; the environment's own win), so that they decode on other "
        "x86-64 CPUs; bfloat16 ones keep the CPU's own and decode on the same kind of CPU only",
    )
    for q in (
        e,
        sub.add_parser("decode", help="stream -> PNG", formatter_class=HelpFormatter),
    ):
        add_model_options(q, "" if q is e else "; decoding picks the shipped one of the stream's hash")
        q.add_argument("--context", help="context-model checkpoint (default: the shipped proxy or AR model)")
        add_device_option(
            q,
            "cpu",
            " of the networks (entropy coding runs on the CPU; a stream decodes exactly only with the "
            "networks on the device type it was encoded on)",
        )
    d = sub.choices["decode"]
    d.add_argument("stream", help="input stream file")
    d.add_argument("out", help="output PNG")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "encode" and args.substreams is not None:
        if not 1 <= args.substreams <= 256:
            raise UserError("--substreams must be between 1 and 256")
        if args.coder not in (None, "rans"):
            raise UserError("--substreams applies to --coder rans only")
    device = torch_device(args.device, deterministic=True)  # runs no CPU kernel, nor do these two
    rans.prepare()  # load the compiled coder now, so that the times printed leave it out
    check_model_options(args)
    quality, header = args.quality, None
    if args.command == "decode":
        path = Path(args.stream)
        if not path.is_file():
            raise UserError(f"stream {path} does not exist")
        stream = path.read_bytes()
        header, _, _ = unpack(stream)
    # CPU kernels, chosen before torch's first one runs: an encoder's portable ones (bfloat16 keeps
    # the CPU's own, for its matrix units), a decoder's those its stream records (none: older)
    if args.command == "encode" and args.precision == "float32":
        pin_kernels()
    elif header is not None and "kernels" in header:
        pin_kernels(parse_kernels(header["kernels"]))
    if header is not None and not args.model and quality is None:
        quality = shipped_quality(header["model"])
    base, meta = load_model(args.model, quality)
    base.to(device)
    if args.command == "encode":
        if bool(args.order) == bool(args.kind):
            raise UserError("give exactly one of --order and --kind autoregressive")
        order = od.DecodingOrder.parse(args.order) if args.order else None
        context, cmeta = context_for(args, order, quality=quality)
        context.to(device)
        coder = args.coder or coders.default_coder(context.mixture)  # encode() checks it fits K
        if args.substreams is not None and coder != "rans":
            raise UserError(
                f"--substreams applies to --coder rans only, and this model is coded with {coder}"
            )
        image = data.load_image(args.image)
        enc = encode(image, base, meta["hash"], context, cmeta, order, coder, args.substreams, args.precision)
        write_bytes(enc.stream, args.out)
        npix = image.shape[1] * image.shape[2]
        payload_bits, header_bytes = sizes(enc.stream)
        print(
            f"{len(enc.stream)} bytes, {8 * len(enc.stream) / npix:.4f} bpp: coded ẑ and ŷ "
            f"{payload_bits / npix:.4f} bpp against {enc.estimated_bits / npix:.4f} bpp from the "
            "likelihoods "
            f"({100 * (payload_bits / enc.estimated_bits - 1):+.2f}%), "
            f"container header {header_bytes} bytes; "
            f"{enc.seconds:.2f} s -> {args.out}"
        )
        return 0
    context, cmeta = context_for(args, None, header, quality)
    context.to(device)
    dec = decode(stream, base, meta["hash"], context, cmeta)
    write_png(to_uint8(dec.image), args.out)
    print(
        f"decoded in {dec.seconds:.3f} s: ŷ stages {dec.latent_seconds:.3f} s (context network "
        f"{dec.network_seconds:.3f} s, entropy coding {dec.coding_seconds:.3f} s), ẑ and h_s "
        f"{dec.hyper_seconds:.3f} s, synthesis {dec.synthesis_seconds:.3f} s -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
