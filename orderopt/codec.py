"""Real bitstreams: encode and decode ŷ (and ẑ) in any decoding order with range coding.

    python -m orderopt.codec encode IMAGE OUT.oopt (--order "0,1;2,3" | --kind autoregressive)
    python -m orderopt.codec decode IN.oopt OUT.png

ẑ is coded under the factorized prior, ŷ under the Gaussians of a context model
(constriction's range coder and quantized Gaussian). Stage t of an order is decoded for all
patches at once from the latents of earlier stages; the encoder runs exactly the decoder's
computation, stage by stage, so both sides see bit-identical parameters.

Context models: a dedicated multistage or autoregressive model (``--context CKPT``), or the
any-order proxy for any order (the shipped proxy of the order's patch size by default).
Checkerboard is ``--order 0,1;1,0`` and hyperprior-only ``--order 0``.

Container (little-endian)::

    b"OOPT" | version u8 | header length u32 | header (JSON) | ẑ words u32 | ŷ words u32
            | CRC-32 of everything before it u32 | ẑ stream (u32 words) | ŷ stream (u32 words)

The header names the base model's hash, the context model (kind, order, hash), the image
size and the latent shapes and symbol ranges, so that a stream decodes on its own.
"""

from __future__ import annotations

import argparse
import json
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import constriction
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import data
from . import orders as od
from .context import AnyOrderContext, AutoregressiveContext, ContextModel, MultistageContext
from .errors import HelpFormatter, OneLineErrorParser, UserError, run_cli
from .evaluate import to_uint8
from .fit import load_context
from .model import SCALE_MIN, SHIPPED, HyperpriorCodec, gaussian_bits, load_model

MAGIC, VERSION = b"OOPT", 1
_PREFIX = struct.Struct("<4sBI")
_SIZES = struct.Struct("<III")
WEIGHTS = SHIPPED.parent  # the shipped weights folder


# --- stage schedules -------------------------------------------------------------------------
class Schedule:
    """Which latents each stage decodes and their Gaussian parameters given earlier stages."""

    num_stages: int

    def where(self, t: int) -> torch.Tensor:
        """(H, W) bool: the latents decoded at stage t."""
        raise NotImplementedError

    def params(self, y: torch.Tensor, hyper: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(means, scales), each (M, n_t), of stage t's latents, in :meth:`take`'s order."""
        raise NotImplementedError

    def take(self, y: torch.Tensor, t: int) -> torch.Tensor:
        """Stage t's latents of y (1, M, H, W) as (M, n_t)."""
        return y[0][:, self.where(t)]

    def put(self, y: torch.Tensor, t: int, values: torch.Tensor) -> None:
        """Write (M, n_t) values of stage t into y, inverse of :meth:`take`."""
        y[0][:, self.where(t)] = values


class OrderSchedule(Schedule):
    """Stages of a decoding order, with a dedicated multistage model or the any-order proxy."""

    def __init__(self, model: ContextModel, order: od.DecodingOrder, height: int, width: int):
        self.model, self.order = model, order
        self.num_stages = order.num_stages
        self.stage = torch.from_numpy(order.stage_map(height, width))

    def where(self, t: int) -> torch.Tensor:
        return self.stage == t

    def params(self, y, hyper, t):
        if isinstance(self.model, MultistageContext):  # strided: only this stage's positions
            out = self.model.stage_params(y, hyper, list(self.order.stage_positions(t)))
            return (
                torch.cat([m[0].flatten(1) for m, _ in out], 1),
                torch.cat([s[0].flatten(1) for _, s in out], 1),
            )
        decoded = (self.stage < t).to(y)[None, None]  # proxy: one masked pass with the decoded set S_t
        m, s = self.model.forward_masked(y, hyper, decoded)
        where = self.where(t)
        return m[0][:, where], s[0][:, where]

    def take(self, y, t):
        if not isinstance(self.model, MultistageContext):
            return super().take(y, t)
        k = self.order.patch
        return torch.cat([y[0][:, r::k, c::k].flatten(1) for r, c in self.order.stage_positions(t)], 1)

    def put(self, y, t, values):
        if not isinstance(self.model, MultistageContext):
            return super().put(y, t, values)
        k, start = self.order.patch, 0
        for r, c in self.order.stage_positions(t):
            grid = y[0][:, r::k, c::k]
            n = grid.shape[1] * grid.shape[2]
            y[0][:, r::k, c::k] = values[:, start : start + n].reshape(grid.shape)
            start += n


class RasterSchedule(Schedule):
    """The autoregressive model: one latent position per stage, raster order (H·W stages)."""

    def __init__(self, model: AutoregressiveContext, height: int, width: int):
        self.model, self.h, self.w = model, height, width
        self.num_stages = height * width
        half = model.kernel_size // 2
        self.weight = (model.conv.weight * model.mask).flatten(1)  # (2M, M·K·K)
        self.half = half

    def where(self, t: int) -> torch.Tensor:
        w = torch.zeros(self.h, self.w, dtype=torch.bool)
        w[divmod(t, self.w)] = True
        return w

    def params(self, y, hyper, t):
        i, j = divmod(t, self.w)
        k, half = self.model.kernel_size, self.half
        win = F.pad(y, (half, half, half, half))[0, :, i : i + k, j : j + k].reshape(-1)
        ctx = (self.weight @ win + self.model.conv.bias)[None, :, None, None]
        m, s = self.model.entropy(hyper[:, :, i : i + 1, j : j + 1], ctx)
        return m[0, :, 0], s[0, :, 0]


def make_schedule(model: ContextModel, order: od.DecodingOrder | None, height: int, width: int) -> Schedule:
    if isinstance(model, AutoregressiveContext):
        return RasterSchedule(model, height, width)
    if isinstance(model, MultistageContext):
        return OrderSchedule(model, model.order, height, width)
    if order is None:
        raise UserError("coding with the any-order proxy needs --order")
    if isinstance(model, AnyOrderContext) and model.patch % order.patch:
        raise UserError(
            f"order {order} ({order.patch}×{order.patch}) does not tile the proxy's "
            f"{model.patch}×{model.patch} patch"
        )
    return OrderSchedule(model, order, height, width)


def proxy_order(order: od.DecodingOrder, patch: int) -> od.DecodingOrder:
    """The order tiled to the proxy's patch size (a 1×1 or 2×2 order on a 4×4 proxy)."""
    reps = patch // order.patch
    return od.DecodingOrder(np.tile(order.stages, (reps, reps)))


# --- entropy coding --------------------------------------------------------------------------
def z_probabilities(model: HyperpriorCodec, lo: int, hi: int) -> np.ndarray:
    """(N, hi−lo+1) probabilities of ẑ = lo..hi per channel under the factorized prior."""
    n = model.N
    grid = torch.arange(lo, hi + 1, dtype=torch.float32).view(1, 1, 1, -1).expand(1, n, 1, -1)
    with torch.no_grad():
        p = model.z_prior.likelihood(grid)[0, :, 0].double().numpy()
    return p / p.sum(1, keepdims=True)


@dataclass
class Encoded:
    stream: bytes
    y_hat: torch.Tensor
    estimated_bits: float  # from the likelihoods of the same parameters
    seconds: float


@torch.no_grad()
def encode(
    image: torch.Tensor,
    base: HyperpriorCodec,
    base_hash: str,
    context: ContextModel,
    context_meta: dict,
    order: od.DecodingOrder | None = None,
) -> Encoded:
    """Encode one image (3, H, W) in [0, 1]."""
    t0 = time.perf_counter()
    x, size = data.pad_to_multiple(image[None])
    a = base.analyze(x)
    y_hat, z_hat, hyper = a.y_hat, a.z_hat, a.hyper
    _, m, h, w = y_hat.shape
    if order is not None and isinstance(context, AnyOrderContext) and order.patch != context.patch:
        if context.patch % order.patch:
            raise UserError(
                f"order {order} ({order.patch}×{order.patch}) does not tile the proxy's "
                f"{context.patch}×{context.patch} patch; use a proxy of a multiple of {order.patch}"
            )
        order = proxy_order(order, context.patch)
    schedule = make_schedule(context, order, h, w)
    # symbol ranges of at least two values: the coder's distributions need two symbols
    zlo, ylo = int(z_hat.min()), int(y_hat.min())
    zhi, yhi = max(int(z_hat.max()), zlo + 1), max(int(y_hat.max()), ylo + 1)
    coder = constriction.stream.queue.RangeEncoder()
    zs = z_hat[0].flatten(1)  # (N, n)
    probs = z_probabilities(base, zlo, zhi)
    cat = constriction.stream.model.Categorical(perfect=False)
    coder.encode(
        (zs - zlo).T.reshape(-1).numpy().astype(np.int32),
        cat,
        np.repeat(probs[None], zs.shape[1], 0).reshape(-1, probs.shape[1]),
    )
    z_words = coder.get_compressed()
    coder = constriction.stream.queue.RangeEncoder()
    gauss = constriction.stream.model.QuantizedGaussian(ylo, yhi)
    partial = torch.zeros_like(y_hat)
    estimated = 0.0
    for t in range(schedule.num_stages):
        means, scales = schedule.params(partial, hyper, t)
        symbols = schedule.take(y_hat, t)
        stds = scales.clamp_min(SCALE_MIN)
        coder.encode(
            symbols.reshape(-1).numpy().astype(np.int32),
            gauss,
            means.reshape(-1).double().numpy(),
            stds.reshape(-1).double().numpy(),
        )
        estimated += float(gaussian_bits(symbols, means, stds).sum())
        schedule.put(partial, t, symbols)
    y_words = coder.get_compressed()
    header = {
        "model": base_hash,
        "context": {k: context_meta.get(k) for k in ("kind", "order", "patch", "hash")},
        "order": str(order) if order is not None else None,
        "image": list(size),
        "y_shape": [m, h, w],
        "z_shape": list(z_hat.shape[1:]),
        "z_range": [zlo, zhi],
        "y_range": [ylo, yhi],
    }
    est_z = float(-np.log2(probs[np.arange(zs.shape[0])[:, None], (zs - zlo).long().numpy()]).sum())
    return Encoded(pack(header, z_words, y_words), y_hat[0], estimated + est_z, time.perf_counter() - t0)


def pack(header: dict, z_words: np.ndarray, y_words: np.ndarray) -> bytes:
    hb = json.dumps(header, separators=(",", ":")).encode()
    head = _PREFIX.pack(MAGIC, VERSION, len(hb)) + hb
    sizes = struct.pack("<II", len(z_words), len(y_words))
    body = z_words.astype("<u4").tobytes() + y_words.astype("<u4").tobytes()
    crc = zlib.crc32(head + sizes + body)
    return head + sizes + struct.pack("<I", crc) + body


def unpack(stream: bytes) -> tuple[dict, np.ndarray, np.ndarray]:
    """Check and split a container; one clear error for every kind of damage."""
    if len(stream) < _PREFIX.size or stream[:4] != MAGIC:
        raise UserError("not an orderopt stream (bad magic bytes)")
    _, version, hlen = _PREFIX.unpack_from(stream)
    if version != VERSION:
        raise UserError(f"stream version {version} is not supported (this orderopt reads version {VERSION})")
    off = _PREFIX.size + hlen
    if len(stream) < off + 12:
        raise UserError(f"stream is truncated ({len(stream)} bytes, the header alone needs {off + 12})")
    nz, ny, crc = struct.unpack_from("<III", stream, off)
    need = off + 12 + 4 * (nz + ny)
    if len(stream) != need:
        raise UserError(
            f"stream is {'truncated' if len(stream) < need else 'too long'}: {len(stream)} bytes, "
            f"its header announces {need}"
        )
    body = stream[off + 12 :]
    if zlib.crc32(stream[:off] + stream[off : off + 8] + body) != crc:
        raise UserError("stream is corrupt (checksum mismatch)")
    try:
        header = json.loads(stream[_PREFIX.size : off])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError("stream header is corrupt") from None
    words = np.frombuffer(body, dtype="<u4").astype(np.uint32)
    return header, words[:nz], words[nz:]


@dataclass
class Decoded:
    """A decoded image and where the time went. ``network_seconds`` and ``coding_seconds``
    cover the ŷ stages alone (what the schedule changes); ẑ with h_s, and the synthesis g_s,
    are common to every schedule and timed apart."""

    image: torch.Tensor  # (3, H, W)
    y_hat: torch.Tensor
    seconds: float
    network_seconds: float
    coding_seconds: float
    hyper_seconds: float
    synthesis_seconds: float

    @property
    def latent_seconds(self) -> float:
        return self.network_seconds + self.coding_seconds


@torch.no_grad()
def decode(
    stream: bytes, base: HyperpriorCodec, base_hash: str, context: ContextModel, context_meta: dict
) -> Decoded:
    t0 = time.perf_counter()
    header, z_words, y_words = unpack(stream)
    if header["model"] != base_hash:
        raise UserError(
            f"stream was encoded with base model {header['model']}, not {base_hash}; pass --model"
        )
    if header["context"].get("hash") != context_meta.get("hash"):
        raise UserError(
            f"stream was encoded with context model {header['context'].get('hash')}, not "
            f"{context_meta.get('hash')}; pass the same --context"
        )
    t = time.perf_counter()
    n, hz, wz = header["z_shape"]
    zlo, zhi = header["z_range"]
    probs = z_probabilities(base, zlo, zhi)
    dec = constriction.stream.queue.RangeDecoder(z_words)
    cat = constriction.stream.model.Categorical(perfect=False)
    zs = dec.decode(cat, np.repeat(probs[None], hz * wz, 0).reshape(-1, probs.shape[1]))
    z_hat = torch.from_numpy(zs.reshape(hz * wz, n).T.reshape(1, n, hz, wz).astype(np.float32)) + zlo
    hyper = base.h_s(z_hat)
    m, h, w = header["y_shape"]
    order = od.DecodingOrder.parse(header["order"]) if header.get("order") else None
    schedule = make_schedule(context, order, h, w)
    hyper_s = time.perf_counter() - t
    net = coding = 0.0
    dec = constriction.stream.queue.RangeDecoder(y_words)
    gauss = constriction.stream.model.QuantizedGaussian(*header["y_range"])
    y = torch.zeros(1, m, h, w)
    for st in range(schedule.num_stages):
        t = time.perf_counter()
        means, scales = schedule.params(y, hyper, st)
        stds = scales.clamp_min(SCALE_MIN)
        net += time.perf_counter() - t
        t = time.perf_counter()
        vals = dec.decode(gauss, means.reshape(-1).double().numpy(), stds.reshape(-1).double().numpy())
        schedule.put(y, st, torch.from_numpy(vals.astype(np.float32)).view(m, -1))
        coding += time.perf_counter() - t
    t = time.perf_counter()
    image = data.crop_to(base.synthesize(y), tuple(header["image"]))[0]
    synth_s = time.perf_counter() - t
    return Decoded(image, y[0], time.perf_counter() - t0, net, coding, hyper_s, synth_s)


# --- command line ----------------------------------------------------------------------------
def context_for(args, order: od.DecodingOrder | None, header: dict | None = None):
    """The context model: --context, else the shipped model the stream or the order needs."""
    if args.context:
        return load_context(args.context)
    kind = (header or {}).get("context", {}).get("kind") or ("autoregressive" if args.kind else "anyorder")
    if kind == "multistage":
        raise UserError("this stream was coded with a dedicated multistage model; pass it as --context")
    if kind == "autoregressive":
        path = WEIGHTS / "autoregressive.pt"
    else:
        patch = (header or {}).get("context", {}).get("patch") or (
            4 if order is not None and order.patch == 4 else 2
        )
        path = WEIGHTS / f"proxy_k{patch}.pt"
    if not path.is_file():
        raise UserError(f"no shipped context model {path.name}; pass --context CKPT")
    return load_context(path)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog="python -m orderopt.codec",
        description="Encode or decode an image with a "
        "multistage (or autoregressive) context model and a range coder.",
        formatter_class=HelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("encode", help="image -> stream", formatter_class=HelpFormatter)
    e.add_argument("image", help="input image (PNG, JPEG, ...)")
    e.add_argument("out", help="output stream file")
    e.add_argument("--order", help="decoding order, e.g. '0,1;2,3' (checkerboard '0,1;1,0', hyperprior '0')")
    e.add_argument("--kind", choices=["autoregressive"], help="code with the autoregressive model instead")
    for q in (
        e,
        sub.add_parser("decode", help="stream -> PNG", formatter_class=HelpFormatter),
    ):
        q.add_argument("--model", help="base-model checkpoint (default: the shipped model)")
        q.add_argument("--context", help="context-model checkpoint (default: the shipped proxy or AR model)")
    d = sub.choices["decode"]
    d.add_argument("stream", help="input stream file")
    d.add_argument("out", help="output PNG")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    base, meta = load_model(args.model)
    if args.command == "encode":
        if bool(args.order) == bool(args.kind):
            raise UserError("give exactly one of --order and --kind autoregressive")
        order = od.DecodingOrder.parse(args.order) if args.order else None
        context, cmeta = context_for(args, order)
        image = data.load_image(args.image)
        enc = encode(image, base, meta["hash"], context, cmeta, order)
        Path(args.out).write_bytes(enc.stream)
        npix = image.shape[1] * image.shape[2]
        _, z_words, y_words = unpack(enc.stream)
        payload_bits = 32 * (len(z_words) + len(y_words))
        header_bytes = len(enc.stream) - payload_bits // 8
        print(
            f"{len(enc.stream)} bytes, {8 * len(enc.stream) / npix:.4f} bpp: coded ẑ and ŷ "
            f"{payload_bits / npix:.4f} bpp against {enc.estimated_bits / npix:.4f} bpp from the "
            "likelihoods "
            f"({100 * (payload_bits / enc.estimated_bits - 1):+.2f}%), "
            f"container header {header_bytes} bytes; "
            f"{enc.seconds:.2f} s -> {args.out}"
        )
        return 0
    path = Path(args.stream)
    if not path.is_file():
        raise UserError(f"stream {path} does not exist")
    stream = path.read_bytes()
    header, _, _ = unpack(stream)
    context, cmeta = context_for(args, None, header)
    dec = decode(stream, base, meta["hash"], context, cmeta)
    Image.fromarray(to_uint8(dec.image)).save(args.out)
    print(
        f"decoded in {dec.seconds:.3f} s: ŷ stages {dec.latent_seconds:.3f} s (context network "
        f"{dec.network_seconds:.3f} s, entropy coding {dec.coding_seconds:.3f} s), ẑ and h_s "
        f"{dec.hyper_seconds:.3f} s, synthesis {dec.synthesis_seconds:.3f} s -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
