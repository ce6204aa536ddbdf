"""Encode an image to an orderopt stream, and decode it back, in any decoding order.

ẑ is coded under the factorized prior (constriction's range coder), ŷ under the Gaussians (or
mixtures of K Gaussians) of a context model with one of the coders of :mod:`orderopt.coders`.
The context model's schedule (:mod:`orderopt.decoding`) gives the decoder's stages: stage t
is decoded for all patches at once from the latents of earlier stages, and the encoder runs
exactly the decoder's computation, stage by stage, so both sides see bit-identical parameters.
The container format and its checks are in :mod:`orderopt.container`; the command line is
:mod:`orderopt.codec`.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import constriction
import numpy as np
import torch

from . import coders, data, rans
from . import orders as od
from .container import PRECISIONS, latents_crc, pack, unpack
from .context import ContextModel
from .decoding import Schedule
from .devices import cpu_kernels
from .errors import UserError
from .model import SCALE_MIN, HyperpriorCodec, Params, mixture_bits, mixture_size

CODERS = tuple(coders.REGISTRY)


def z_probabilities(model: HyperpriorCodec, lo: int, hi: int) -> np.ndarray:
    """(N, hi−lo+1) probabilities of ẑ = lo..hi per channel under the factorized prior."""
    n = model.N
    device = next(model.parameters()).device
    grid = torch.arange(lo, hi + 1, dtype=torch.float32, device=device).view(1, 1, 1, -1).expand(1, n, 1, -1)
    with torch.no_grad():
        p = model.z_prior.likelihood(grid)[0, :, 0].double().cpu().numpy()
    return p / p.sum(1, keepdims=True)


def networks_device(base: HyperpriorCodec, context: ContextModel) -> torch.device:
    """The device both networks run on (entropy coding always runs on the CPU)."""
    device = next(base.parameters()).device
    if next(context.parameters()).device != device:
        raise ValueError("the base and context models must be on the same device")
    return device


def gaussians_to_host(*params: torch.Tensor) -> tuple[np.ndarray, ...]:
    """Flattened float64 means and standard deviations (or a mixture's params) for the coder,
    the standard deviations bounded below: one device→host copy, of float32 (half the bytes;
    widening to float64 is exact, wherever it happens)."""
    k = mixture_size(params)
    rows = [v.reshape(-1) for v in params[: len(params) - k]]
    rows += [v.reshape(-1).clamp_min(SCALE_MIN) for v in params[len(params) - k :]]
    return tuple(row.astype(np.float64) for row in torch.stack(rows).cpu().numpy())


def encoder_stages(schedule: Schedule, y_hat: torch.Tensor, hyper: torch.Tensor, device: torch.device):
    """For each stage, what the encoder codes: (symbols, means, stds) as flat host arrays (int64,
    float64, float64), or (symbols, *params) for mixtures, with parameters computed from the
    earlier stages exactly as the decoder will compute them."""
    partial = schedule.new_latents(y_hat.shape[1], device)
    for t in range(schedule.num_stages):
        params = gaussians_to_host(*schedule.params(partial, hyper, t))
        symbols = schedule.take(y_hat, t)
        yield symbols.reshape(-1).cpu().numpy().astype(np.int64), *params
        schedule.put(partial, t, symbols)


def stage_bits(symbols: np.ndarray, *params: np.ndarray) -> float:
    """Bits of integer symbols under the Gaussians (or mixtures): the likelihood estimate of
    their size."""
    tensors: Params = tuple(torch.from_numpy(v.astype(np.float64)) for v in params)
    return float(mixture_bits(torch.from_numpy(symbols.astype(np.float64)), tensors).sum())


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
    coder: str | None = None,
    substreams: int | None = None,
    precision: str = "float32",
) -> Encoded:
    """Encode one image (3, H, W) in [0, 1] with ŷ's ``coder`` (``rans`` with ``substreams``,
    default: :func:`auto_substreams`; ``gaussian``; or ``mixture``; default: rans, or mixture
    for a context model of mixtures: :func:`coders.default_coder`), the context network computing in
    ``precision`` (float32, or bfloat16: see :data:`PRECISIONS`). The networks run on the
    models' device and the stream records it and the precision: floating-point results differ
    between devices, so a stream decodes exactly only with the networks on the same kind of
    device."""
    coder = coder or coders.default_coder(context.mixture)
    if coder not in CODERS:
        raise UserError(f"unknown ŷ coder {coder!r}; choose one of {', '.join(CODERS)}")
    coders.REGISTRY[coder].check(context.mixture)
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    t0 = time.perf_counter()
    device = networks_device(base, context)
    x, size = data.pad_to_multiple(image[None].to(device))
    a = base.analyze(x)
    y_hat, z_hat, hyper = a.y_hat, a.z_hat, a.hyper
    _, m, h, w = y_hat.shape
    schedule = context.schedule(order, h, w, PRECISIONS[precision])
    if context.takes_order:
        order = schedule.order  # tiled to the proxy's patch, as the decoder rebuilds it
    # symbol ranges of at least two values: the coder's distributions need two symbols
    zlo, ylo = int(z_hat.min()), int(y_hat.min())
    zhi, yhi = max(int(z_hat.max()), zlo + 1), max(int(y_hat.max()), ylo + 1)
    zenc = constriction.stream.queue.RangeEncoder()
    zs = z_hat[0].flatten(1).cpu()  # (N, n)
    probs = z_probabilities(base, zlo, zhi)
    cat = constriction.stream.model.Categorical(perfect=False)
    zenc.encode(
        (zs - zlo).T.reshape(-1).numpy().astype(np.int32),
        cat,
        np.repeat(probs[None], zs.shape[1], 0).reshape(-1, probs.shape[1]),
    )
    z_words = zenc.get_compressed()
    stages = list(encoder_stages(schedule, y_hat, hyper, device))
    estimated = sum(stage_bits(*stage) for stage in stages)
    y_words = coders.REGISTRY[coder].encode(stages, (ylo, yhi), substreams)
    header = {
        "model": base_hash,
        "context": {
            **{k: context_meta.get(k) for k in ("kind", "order", "patch", "hash")},
            **({"mixture": context.mixture} if context.mixture > 1 else {}),  # Gaussians: as before
        },
        "order": str(order) if order is not None else None,
        "image": list(size),
        "y_shape": [m, h, w],
        "z_shape": list(z_hat.shape[1:]),
        "z_range": [zlo, zhi],
        "y_range": [ylo, yhi],
        "coder": {"name": coder, **coders.REGISTRY[coder].header()},
        "device": device.type,
        # the CPU thread count the networks ran with: the decoder runs them with the same
        **({"threads": torch.get_num_threads()} if device.type == "cpu" else {}),
        # and the vector kernels: AVX-512 ones round differently from AVX2 ones
        **({"kernels": cpu_kernels()} if device.type == "cpu" else {}),
        "precision": precision,
        "y_crc": latents_crc(y_hat[0]),
    }
    est_z = float(-np.log2(probs[np.arange(zs.shape[0])[:, None], (zs - zlo).long().numpy()]).sum())
    return Encoded(
        pack(header, z_words, y_words), y_hat[0].cpu(), estimated + est_z, time.perf_counter() - t0
    )


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


@contextlib.contextmanager
def intra_op_threads(threads: int | None):
    """Run torch's CPU kernels with ``threads`` threads (None: as they are): matrix products
    split their sums by thread, so the context network's float results, and with them the
    coded distributions, depend on the thread count the encoder used."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def decode(
    stream: bytes, base: HyperpriorCodec, base_hash: str, context: ContextModel, context_meta: dict
) -> Decoded:
    t0 = time.perf_counter()
    header, z_words, y_words = unpack(stream)
    with intra_op_threads(header.get("threads") if header["device"] == "cpu" else None):
        return _decode(header, z_words, y_words, t0, base, base_hash, context, context_meta)


def _decode(header, z_words, y_words, t0, base, base_hash, context, context_meta) -> Decoded:
    if header["model"] != base_hash:
        raise UserError(
            f"stream was encoded with base model {header['model']}, not {base_hash}; pass --model"
        )
    if header["context"].get("hash") != context_meta.get("hash"):
        raise UserError(
            f"stream was encoded with context model {header['context'].get('hash')}, not "
            f"{context_meta.get('hash')}; pass the same --context"
        )
    m, h, w = header["y_shape"]  # checked by unpack: consistent with the image size
    n, hz, wz = header["z_shape"]
    if (m, n) != (base.M, base.N):
        raise UserError(
            f"stream header is invalid: {m} latent and {n} hyper-latent channels, and the base model "
            f"has {base.M} and {base.N}"
        )
    device = networks_device(base, context)
    coded_on = header["device"]
    if coded_on != device.type:
        raise UserError(
            f"stream was encoded with the networks on {coded_on}, and decodes exactly only there; "
            f"pass --device {coded_on}"
        )
    mine = cpu_kernels() if coded_on == "cpu" else None
    if header.get("kernels", mine) != mine:  # absent: an older stream, or one coded on a GPU
        raise UserError(
            f"stream was encoded with CPU kernels {header['kernels']}, and this process runs "
            f"{mine}, whose floats round differently; decode it on a CPU that has the "
            "stream's kernels, with ATEN_CPU_CAPABILITY (aten), ONEDNN_MAX_CPU_ISA (onednn) and MKL_CBWR "
            "(mkl) as in the stream (python -m orderopt.codec decode sets them unless the environment "
            "has)"
        )
    t = time.perf_counter()
    zlo, zhi = header["z_range"]
    probs = z_probabilities(base, zlo, zhi)
    dec = constriction.stream.queue.RangeDecoder(z_words)
    cat = constriction.stream.model.Categorical(perfect=False)
    zs = dec.decode(cat, np.repeat(probs[None], hz * wz, 0).reshape(-1, probs.shape[1]))
    z_hat = (
        torch.from_numpy(zs.reshape(hz * wz, n).T.reshape(1, n, hz, wz).astype(np.float32)).to(device) + zlo
    )
    hyper = base.h_s(z_hat)
    order = od.DecodingOrder.parse(header["order"]) if header.get("order") else None
    schedule = context.schedule(order, h, w, PRECISIONS[header["precision"]])
    if device.type == "cuda":  # kernels run asynchronously: wait for h_s before reading the clock
        torch.cuda.synchronize(device)
    hyper_s = time.perf_counter() - t
    net = coding = 0.0
    y = schedule.new_latents(m, device)
    try:
        dec = coders.coder_of(header).decoder(y_words, header)
        for st in range(schedule.num_stages):
            t = time.perf_counter()
            params = gaussians_to_host(*schedule.params(y, hyper, st))  # the copy waits for the device
            net += time.perf_counter() - t
            t = time.perf_counter()
            vals = dec.decode(*params)
            schedule.put(y, st, torch.from_numpy(vals.astype(np.float32)).view(-1, m).to(device))
            coding += time.perf_counter() - t
    except rans.StreamError as e:
        raise UserError(f"stream is corrupt ({e})") from None
    except AssertionError as e:  # constriction's range decoder on data no model could have coded
        raise UserError(f"stream is corrupt ({str(e).splitlines()[0][:200]})") from None
    if not dec.finished():
        raise UserError("stream is corrupt (its ŷ data does not end with the last stage)")
    t = time.perf_counter()
    if latents_crc(y[0].reshape(m, h, w)) != header["y_crc"]:
        raise UserError("stream is corrupt (the decoded latents do not match their checksum)")
    image = data.crop_to(base.synthesize(y), tuple(header["image"]))[0].cpu()
    synth_s = time.perf_counter() - t
    return Decoded(image, y[0].cpu(), time.perf_counter() - t0, net, coding, hyper_s, synth_s)
