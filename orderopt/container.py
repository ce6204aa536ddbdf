"""The stream container: layout, packing, and the checks a stream passes before it is decoded.

Container (little-endian)::

    b"OOPT" | version u8 | header length u32 | header (JSON) | ẑ words u32 | ŷ words u32
            | CRC-32 of everything before it u32 | ẑ stream (u32 words) | ŷ stream (u32 words)

The header names the base model's hash, the context model (kind, order, hash), the image
size, the latent shapes and symbol ranges, the ŷ coder (with its table grid), the device type
the networks ran on and the precision of the context network (float32 or bfloat16; floating
point differs between devices, so a stream decodes exactly only on the same kind), so that a
stream decodes on its own.
"""

from __future__ import annotations

import json
import re
import struct
import zlib

import numpy as np
import torch

from . import coders, data
from . import orders as od
from .devices import KERNELS_PATTERN
from .errors import UserError

# The version changes with the format and with the arithmetic of the stage parameters: a
# stream decodes exactly only with the arithmetic that wrote it. 3: ŷ coder recorded, rANS,
# stages computed at their own latents only. 4: a stage's symbols in latent-major order, its
# parameters in row layout, the autoregressive decoder's rows above batched per row, and the
# context network's precision recorded. 5: a checksum of the decoded ŷ (catches a header whose
# coder, ranges or order were edited consistently with the container CRC).
MAGIC, VERSION = b"OOPT", 5
PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_PREFIX = struct.Struct("<4sBI")


def latents_crc(y_hat: torch.Tensor) -> int:
    """CRC-32 of ŷ (C, H, W) as int32: the decoder's last check that it got the encoder's ŷ."""
    return zlib.crc32(y_hat.detach().to("cpu", torch.int32).contiguous().numpy().tobytes())


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
    if version < VERSION:
        raise UserError(
            f"stream version {version} comes from an older orderopt, whose arithmetic differs; "
            f"encode the image again (this orderopt reads version {VERSION})"
        )
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
    check_header(header)
    words = np.frombuffer(body, dtype="<u4").astype(np.uint32)
    return header, words[:nz], words[nz:]


# A symbol range this wide already means scales far beyond any trained model's; it bounds the
# probability tables a header can make the decoder build.
MAX_SYMBOL = 1 << 15
MAX_PATCH = 64
MAX_MIXTURE = 64  # Gaussian-mixture components a stream's context model may have
MAX_THREADS = 1024  # CPU threads the encoder's networks ran with
MAX_Z_TABLE = 1 << 27  # entries of ẑ's probability rows (1 GiB in float64): far above real streams
_CONTEXT_KINDS = ("multistage", "autoregressive", "anyorder")


def sizes(stream: bytes) -> tuple[int, int]:
    """(payload bits of ẑ and ŷ, header bytes: everything else) of a valid stream."""
    _, z_words, y_words = unpack(stream)
    payload_bits = 32 * (len(z_words) + len(y_words))
    return payload_bits, len(stream) - payload_bits // 8


def _int(value, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise UserError(f"stream header is invalid: {what} is {value!r}, not an integer in {lo}..{hi}")
    return value


def _ints(value, n: int, what: str, lo: int, hi: int) -> list[int]:
    if not isinstance(value, list) or len(value) != n:
        raise UserError(f"stream header is invalid: {what} is {value!r}, not a list of {n} integers")
    return [_int(v, what, lo, hi) for v in value]


def _str(
    value,
    what: str,
    choices: tuple[str, ...] | None = None,
    optional: bool = False,
    pattern: re.Pattern | None = None,
) -> str | None:
    if optional and value is None:
        return None
    if (
        not isinstance(value, str)
        or (choices is not None and value not in choices)
        or (pattern is not None and not pattern.fullmatch(value))
        or len(value) > 10_000
    ):
        want = f"one of {', '.join(choices)}" if choices else "a string" if pattern is None else "well formed"
        raise UserError(f"stream header is invalid: {what} is {od._describe(value)}, not {want}")
    return value


_HASH = re.compile(r"[^\x00-\x1f\x7f]{1,100}")  # printable text: error messages print hashes


def check_header(header) -> None:
    """Every field of a stream header has its type and range, and the fields agree: the latent
    shapes follow from the image size (itself within :func:`orderopt.data.max_pixels`), the
    order's patch fits the latents, the symbol ranges are bounded. Runs before anything is
    allocated from the header, so a crafted header cannot make the decoder allocate or loop
    beyond what the image-size limit allows."""
    if not isinstance(header, dict):
        raise UserError("stream header is invalid: not a JSON object")
    height, width = _ints(header.get("image"), 2, "image size", 1, 1 << 20)
    data.check_size(height, width, "the stream's image")
    hz, wz = -(-height // 64), -(-width // 64)  # the codec pads to multiples of 64
    m, h, w = _ints(header.get("y_shape"), 3, "y_shape", 1, 1 << 12)
    n, zh, zw = _ints(header.get("z_shape"), 3, "z_shape", 1, 1 << 12)
    if (h, w, zh, zw) != (4 * hz, 4 * wz, hz, wz):
        raise UserError(
            f"stream header is invalid: latent shapes {[h, w]} and {[zh, zw]} do not fit an image of "
            f"{height}×{width} (expected {[4 * hz, 4 * wz]} and {[hz, wz]})"
        )
    for name in ("z_range", "y_range"):
        lo, hi = _ints(header.get(name), 2, name, -MAX_SYMBOL, MAX_SYMBOL)
        if lo >= hi:
            raise UserError(f"stream header is invalid: {name} {[lo, hi]} is empty")
    zlo, zhi = header["z_range"]
    if zh * zw * n * (zhi - zlo + 1) > MAX_Z_TABLE:  # ẑ's decoder holds a table row per symbol
        raise UserError(
            f"stream header is invalid: z_range {[zlo, zhi]} is too wide for {n}×{zh}×{zw} hyper-latents"
        )
    _str(header.get("model"), "model hash", pattern=_HASH)
    ctx = header.get("context")
    if not isinstance(ctx, dict):
        raise UserError("stream header is invalid: context is not an object")
    kind = _str(ctx.get("kind"), "context kind", _CONTEXT_KINDS)
    _str(ctx.get("hash"), "context hash", pattern=_HASH)
    _str(ctx.get("order"), "context order", optional=True)
    if ctx.get("patch") is not None:
        _int(ctx.get("patch"), "context patch", 1, MAX_PATCH)
    if "mixture" in ctx:
        _int(ctx.get("mixture"), "context mixture", 1, MAX_MIXTURE)
    text = _str(header.get("order"), "order", optional=True)
    if kind == "anyorder" and text is None:
        raise UserError("stream header is invalid: a stream coded with the proxy needs its order")
    if text is not None:
        try:
            order = od.DecodingOrder.parse(text)
        except ValueError as err:
            raise UserError(f"stream header is invalid: {err}") from None
        if order.patch > min(MAX_PATCH, h, w):
            raise UserError(
                f"stream header is invalid: its {order.patch}×{order.patch} order is larger than "
                f"its {h}×{w} latents"
            )
    coder = header.get("coder")
    if not isinstance(coder, dict):
        raise UserError("stream header is invalid: coder is not an object")
    _str(coder.get("name"), "coder", tuple(coders.REGISTRY))
    _str(header.get("device"), "device", ("cpu", "cuda"))
    if "threads" in header:
        _int(header.get("threads"), "threads", 1, MAX_THREADS)
    if "kernels" in header:
        _str(header.get("kernels"), "CPU kernels", pattern=KERNELS_PATTERN)
    _str(header.get("precision"), "precision", tuple(PRECISIONS))
    _int(header.get("y_crc"), "y_crc", 0, (1 << 32) - 1)
