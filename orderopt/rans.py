"""A compiled, table-driven rANS coder for quantized Gaussians: a whole stage per call.

constriction's per-symbol quantized Gaussian costs about 200 ns per decoded symbol
(results/coder_throughput.md), and that floor is paid by every decoding schedule. Here each
symbol is coded as the residual r = ŷ − round(μ) under one of S×D precomputed categorical
tables, chosen by σ (S levels, log-spaced) and by the mean's offset μ − round(μ) (D bins).
Table choice, residuals and rANS all run in one numba-compiled loop per call, so a decoding
stage costs one call whatever its number of tables (a pure-Python grouping by table pays a
call per group; a retired probe measured that: results/retired.md).

Format: 64-bit rANS state, 32-bit words, 16-bit probabilities. A table covers
r ∈ [−R, R] with R about ``TAIL`` σ, plus an escape symbol; an escaped residual follows as
two uniform 16-bit chunks of its zigzag code. Every symbol of a table has frequency ≥ 1, so
any integer is codable. The encoder takes all symbols at once (rANS codes in reverse) and the
decoder decodes them stage by stage, in order, from the same (means, stds) — the codec computes
both sides' parameters bit-identically, and so is the table choice computed here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numba
import numpy as np
from scipy.special import ndtr

from .model import SCALE_MIN

PREC = 16  # probability bits
_L = np.uint64(1 << 31)  # lower bound of the normalised state
_MASK = np.uint64((1 << PREC) - 1)
TAIL = 8.0  # table radius in standard deviations; beyond it, residuals escape


@dataclass(frozen=True)
class Grid:
    """The table grid: ``scales`` σ levels log-spaced in [SCALE_MIN, ``max_scale``] and
    ``offsets`` bins of the mean's fractional offset. A stream records it."""

    scales: int = 64
    offsets: int = 32
    max_scale: float = 64.0

    @property
    def log_step(self) -> float:
        return float(np.log(self.max_scale / SCALE_MIN) / (self.scales - 1))


@dataclass(frozen=True)
class Tables:
    """Integer CDFs of every table, flattened: table t's CDF is ``cdf[start[t] : start[t] +
    2 radius[t] + 3]`` (symbols −R..R, then the escape)."""

    grid: Grid
    cdf: np.ndarray  # int32
    start: np.ndarray  # int64 (S·D,)
    radius: np.ndarray  # int64 (S·D,)

    @cached_property
    def digest(self) -> str:
        """A short hash of the tables: streams record it, because the tables are computed
        in floating point (scipy's ndtr) and another machine could round one entry apart."""
        return hashlib.sha256(self.cdf.tobytes() + self.radius.tobytes()).hexdigest()[:16]


def quantize(p: np.ndarray, total: int = 1 << PREC) -> np.ndarray:
    """Integer frequencies ≥ 1 that sum to ``total``, close to ``total`` · p."""
    f = np.floor(p / p.sum() * (total - len(p))).astype(np.int64) + 1
    f[np.argmax(p)] += total - f.sum()
    return f


@lru_cache(maxsize=4)
def tables(grid: Grid = Grid()) -> Tables:
    """Build the grid's tables (once per process, a few tens of milliseconds)."""
    deltas = (np.arange(grid.offsets) + 0.5) / grid.offsets - 0.5
    cdfs, radii = [], []
    for sigma in np.exp(np.log(SCALE_MIN) + grid.log_step * np.arange(grid.scales)):
        radius = max(1, int(np.ceil(TAIL * sigma)))
        edges = (np.arange(-radius, radius + 2) - 0.5 - deltas[:, None]) / sigma  # (D, 2R+2)
        cum = ndtr(edges)
        p = np.concatenate([np.diff(cum, axis=1), cum[:, :1] + 1 - cum[:, -1:]], axis=1)  # escape: tails
        cdfs += [np.concatenate([[0], np.cumsum(quantize(row))]) for row in p]
        radii += [radius] * grid.offsets
    start = np.cumsum([0] + [len(c) for c in cdfs[:-1]])
    return Tables(grid, np.concatenate(cdfs).astype(np.int32), start.astype(np.int64), np.array(radii))


# --- compiled core ---------------------------------------------------------------------------
@numba.njit(cache=True, nogil=True)
def _table_of(mean, std, log_min, inv_step, scales, offsets):
    """(table index, round(μ)) of one symbol."""
    centre = np.floor(mean + 0.5)
    level = int(np.rint((np.log(max(std, SCALE_MIN)) - log_min) * inv_step))
    level = min(max(level, 0), scales - 1)
    off = int(np.floor((mean - centre + 0.5) * offsets))
    off = min(max(off, 0), offsets - 1)
    return level * offsets + off, np.int64(centre)


@numba.njit(cache=True, nogil=True)
def _push(x, start, freq, out, n):
    """Encode one (start, freq) onto state x; renormalised words go to out[n]."""
    if x >= ((_L >> np.uint64(PREC)) << np.uint64(32)) * np.uint64(freq):
        out[n] = np.uint32(x & np.uint64(0xFFFFFFFF))
        n += 1
        x >>= np.uint64(32)
    f = np.uint64(freq)
    x = ((x // f) << np.uint64(PREC)) + (x % f) + np.uint64(start)
    return x, n


@numba.njit(cache=True, nogil=True)
def _encode(symbols, means, stds, cdf, start, radius, log_min, inv_step, scales, offsets, out):
    """Encode all symbols (in reverse, as rANS must); returns the words in decoding order."""
    x, n = _L, 0
    for i in range(len(symbols) - 1, -1, -1):
        t, centre = _table_of(means[i], stds[i], log_min, inv_step, scales, offsets)
        r, big, at = symbols[i] - centre, radius[t], start[t]
        if -big <= r <= big:
            s = at + r + big
        else:  # escape, then the zigzag code in two 16-bit chunks (pushed last-decoded first)
            z = (r << 1) ^ (r >> 63)
            x, n = _push(x, z & 0xFFFF, 1, out, n)
            x, n = _push(x, (z >> 16) & 0xFFFF, 1, out, n)
            s = at + 2 * big + 1
        x, n = _push(x, cdf[s], cdf[s + 1] - cdf[s], out, n)
    out[n] = np.uint32(x & np.uint64(0xFFFFFFFF))
    out[n + 1] = np.uint32(x >> np.uint64(32))
    return out[: n + 2][::-1].copy()


@numba.njit(cache=True, nogil=True)
def _decode(words, pos, x, means, stds, cdf, start, radius, log_min, inv_step, scales, offsets, out):
    """Decode len(out) symbols from state x, reading words[pos:]; returns (x, pos), pos −1 when
    the words ran out. Locals only: the state's serial dependency is the decoder's bottleneck."""
    n = len(words)
    for i in range(len(out)):
        t, centre = _table_of(means[i], stds[i], log_min, inv_step, scales, offsets)
        big, at = radius[t], start[t]
        slot = np.int64(x & _MASK)
        lo = at + big  # the residual 0 is the likeliest: search outward from it
        while cdf[lo] > slot:
            lo -= 1
        while cdf[lo + 1] <= slot:
            lo += 1
        x = np.uint64(cdf[lo + 1] - cdf[lo]) * (x >> np.uint64(PREC)) + (x & _MASK) - np.uint64(cdf[lo])
        if x < _L:
            if pos >= n:
                return x, -1
            x = (x << np.uint64(32)) | np.uint64(words[pos])
            pos += 1
        s = lo - at
        if s <= 2 * big:
            out[i] = centre + s - big
            continue
        z = np.int64(0)
        for _ in range(2):  # escape: the zigzag code, high chunk first; each pops 16 bits
            z = (z << 16) | np.int64(x & _MASK)
            x >>= np.uint64(PREC)
            if x < _L:
                if pos >= n:
                    return x, -1
                x = (x << np.uint64(32)) | np.uint64(words[pos])
                pos += 1
        out[i] = centre + ((z >> 1) ^ -(z & 1))
    return x, pos


@numba.njit(cache=True, nogil=True, parallel=True)
def _decode_parallel(words, bounds, xs, pos, edges, means, stds, cdf, start, radius, log_min, inv_step,
                     scales, offsets, out):  # fmt: skip
    """Decode substream j's chunk edges[j]:edges[j+1] of a stage from words[bounds[j]:bounds[j+1]],
    all substreams at once (threads); xs and pos hold each substream's state."""
    for j in numba.prange(len(edges) - 1):
        a, b = edges[j], edges[j + 1]
        x, p = _decode(words[bounds[j] : bounds[j + 1]], pos[j], xs[j], means[a:b], stds[a:b], cdf, start,
                       radius, log_min, inv_step, scales, offsets, out[a:b])  # fmt: skip
        xs[j], pos[j] = x, p


# --- public API ------------------------------------------------------------------------------
def _args(grid: Grid) -> tuple:
    tab = tables(grid)
    return (tab.cdf, tab.start, tab.radius, float(np.log(SCALE_MIN)), 1.0 / grid.log_step,
            grid.scales, grid.offsets)  # fmt: skip


def chunks(n: int, substreams: int) -> np.ndarray:
    """Edges of the contiguous chunks that split a stage's n symbols among the substreams."""
    return np.arange(substreams + 1, dtype=np.int64) * n // substreams


def encode(stages: list[tuple[np.ndarray, np.ndarray, np.ndarray]], grid: Grid = Grid(),
           substreams: int = 1) -> np.ndarray:  # fmt: skip
    """Code the stages' integer symbols under N(means, stds²) quantized to integers, each stage
    split into ``substreams`` contiguous chunks, one independent rANS stream per chunk index (so
    that a decoder may decode them in parallel). Returns uint32 words: the substream count, the
    substreams' lengths, then the substreams. A :class:`Decoder` decodes the stages in order."""
    if substreams < 1:
        raise ValueError("substreams must be at least 1")
    if any(not (len(sy) == len(m) == len(d)) for sy, m, d in stages):
        raise ValueError("symbols, means and stds must have the same length")
    flat = [np.concatenate([np.ravel(stage[k]) for stage in stages] + [[]]).astype(t)
            for k, t in enumerate((np.int64, np.float64, np.float64))]  # fmt: skip
    residual = flat[0] - np.floor(flat[1] + 0.5)  # what escapes carry, in 32 bits of zigzag code
    if not (np.isfinite(flat[1]).all() and (np.abs(residual) < 2**30).all()):
        raise ValueError("symbols must lie within 2^30 of finite means")
    offsets = np.cumsum([0] + [len(stage[0]) for stage in stages])
    edges = [o + chunks(len(stage[0]), substreams) for o, stage in zip(offsets[:-1], stages, strict=True)]
    parts, args = [], _args(grid)
    for j in range(substreams):
        idx = np.concatenate([np.arange(e[j], e[j + 1]) for e in edges] + [[]]).astype(np.int64)
        out = np.empty(3 * len(idx) + 2, dtype=np.uint32)  # ≤ 3 words per (escaped) symbol
        parts.append(_encode(*(v[idx] for v in flat), *args, out))
    return np.concatenate([np.array([substreams] + [len(p) for p in parts], dtype=np.uint32), *parts])


def prepare(grid: Grid = Grid()) -> None:
    """Build the tables and load the compiled coder, so that timings leave them out: numba
    compiles it on first use (seconds), later processes load it from numba's cache."""
    stages = [(np.zeros(4, np.int64), np.zeros(4), np.ones(4))]
    dec = Decoder(encode(stages, grid, 2), grid)
    out = np.empty(4, dtype=np.int64)
    _decode_parallel(dec.words, dec.bounds, dec.xs, dec.pos, chunks(4, 2), *stages[0][1:], *dec.args, out)
    _decode(dec.words, 2, dec.xs[0], stages[0][1][:0], stages[0][2][:0], *dec.args, out[:0])


class StreamError(ValueError):
    """The words do not hold the symbols asked for (a truncated or corrupt stream)."""


class Decoder:
    """Decodes the words of :func:`encode` stage by stage, one compiled call per stage; a
    stage's substreams are decoded by parallel threads when the stage is large."""

    PARALLEL_MIN = 4096  # symbols per stage below which threads cost more than they save

    def __init__(self, words: np.ndarray, grid: Grid = Grid()):
        words = np.ascontiguousarray(words, dtype=np.uint32)
        if len(words) < 1 or not 1 <= int(words[0]) < len(words):
            raise StreamError("rANS stream has no valid substream table")
        p = int(words[0])
        lengths = words[1 : 1 + p].astype(np.int64)
        if len(lengths) < p or (lengths < 2).any() or 1 + p + lengths.sum() != len(words):
            raise StreamError("rANS substream lengths do not match the stream")
        self.words, self.substreams = words, p
        self.bounds = 1 + p + np.concatenate([[0], np.cumsum(lengths)])
        first = words[self.bounds[:-1]].astype(np.uint64), words[self.bounds[:-1] + 1].astype(np.uint64)
        self.xs = (first[0] << np.uint64(32)) | first[1]
        self.pos = np.full(p, 2, dtype=np.int64)  # next word, relative to each substream
        self.parts = [words[a:b] for a, b in zip(self.bounds[:-1], self.bounds[1:], strict=True)]
        self.args = _args(grid)

    def decode(self, means: np.ndarray, stds: np.ndarray) -> np.ndarray:
        """The next stage's symbols (int64), one per (mean, std)."""
        means = np.ascontiguousarray(means, dtype=np.float64)
        stds = np.ascontiguousarray(stds, dtype=np.float64)
        if len(means) != len(stds):
            raise ValueError("means and stds must have the same length")
        n, out = len(means), np.empty(len(means), dtype=np.int64)
        # one substream needs no chunk edges: the autoregressive model's many small stages
        edges = chunks(n, self.substreams) if self.substreams > 1 else (0, n)
        if self.substreams > 1 and n >= self.PARALLEL_MIN:
            _decode_parallel(self.words, self.bounds, self.xs, self.pos, edges, means, stds, *self.args, out)
        else:
            for j, part in enumerate(self.parts):
                a, b = edges[j], edges[j + 1]
                self.xs[j], self.pos[j] = _decode(
                    part, self.pos[j], self.xs[j], means[a:b], stds[a:b], *self.args, out[a:b]
                )
        if self.pos.min() < 0:
            raise StreamError("rANS stream ended before its last symbol")
        return out

    def finished(self) -> bool:
        """Whether every word was read and every state is back where its encoder started:
        true after decoding an intact stream to its end."""
        return bool((self.pos == np.diff(self.bounds)).all() and (self.xs == _L).all())
