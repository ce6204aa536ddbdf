"""Entropy coders of ŷ, behind one interface and registered by the name a stream records.

A coder codes a schedule's stages in order, each stage a batch of (symbols, means, stds) of
discretized Gaussians, or (symbols, *params) of mixtures of K Gaussians (K weight logits, K
means, K stds: :mod:`orderopt.model`), and decodes them stage by stage as the decoder computes
each stage's parameters::

    encode:  stages ──► coder.encode(stages, y_range, substreams) ──► words
    decode:  words ──► coder.decoder(words, header) ──► decode(*params) per stage ──► symbols

- ``rans`` (default for Gaussians): :mod:`orderopt.rans`, compiled and table-driven, one call
  per stage, its substreams decoded by parallel threads.
- ``gaussian``: constriction's range coder under per-symbol quantized Gaussians (slower to
  decode, results/coder_throughput.md).
- ``mixture`` (default for mixtures, K > 1; codes Gaussians too): constriction's range coder
  under per-symbol categorical distributions over the stream's symbol range, computed from the
  params by :func:`orderopt.model.mixture_table` in float64.

A new coder is one :class:`LatentCoder` subclass with :func:`register`; ``codec --coder``
lists what is registered and ``tests/test_codec.py`` round-trips every one of them.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator
from dataclasses import astuple
from typing import Protocol

import constriction
import numpy as np

from . import rans
from .errors import UserError
from .model import SCALE_MIN, mixture_size, mixture_table


class StageDecoder(Protocol):
    def decode(self, *params: np.ndarray) -> np.ndarray: ...

    def finished(self) -> bool: ...


class LatentCoder:
    """Codes ŷ's stages; ``header()`` is what a stream records of it besides its name, and
    ``decoder`` refuses words that another version of it wrote."""

    name: str = ""
    mixtures = False  # whether it codes mixtures of K > 1 Gaussians, not Gaussians only

    def header(self) -> dict:
        return {}

    def check(self, mixture: int) -> None:
        """Refuse a context model of K Gaussians that this coder cannot code."""
        if mixture > 1 and not self.mixtures:
            raise UserError(
                f"ŷ coder {self.name} codes Gaussian context models only, and this one predicts "
                f"mixtures of K = {mixture} Gaussians; use --coder {default_coder(mixture)}"
            )

    def encode(self, stages: list, y_range: tuple[int, int], substreams: int | None) -> np.ndarray:
        raise NotImplementedError

    def decoder(self, words: np.ndarray, header: dict) -> StageDecoder:
        raise NotImplementedError


REGISTRY: dict[str, LatentCoder] = {}


def register(cls: type[LatentCoder]) -> type[LatentCoder]:
    REGISTRY[cls.name] = cls()
    return cls


def default_coder(mixture: int) -> str:
    """The coder used unless one is asked for: rANS for Gaussians, ``mixture`` for mixtures."""
    return "rans" if mixture == 1 else "mixture"


def coder_of(header: dict) -> LatentCoder:
    """The coder a stream's header names."""
    name = header.get("coder", {}).get("name")
    if name not in REGISTRY:
        raise UserError(f"stream uses ŷ coder {header.get('coder')}, which this orderopt does not read")
    return REGISTRY[name]


def auto_substreams(stage_sizes: list[int]) -> int:
    """rANS substreams worth their cost (12 bytes each): one per 64k symbols, and only as many
    as the largest stage fills with 4k symbols each (the decoder's threads need that much work;
    the autoregressive model's one position per stage gets one substream); at most 16."""
    return int(np.clip(min(sum(stage_sizes) // 65536, max(stage_sizes, default=0) // 4096), 1, 16))


@register
class RansCoder(LatentCoder):
    name = "rans"

    def header(self) -> dict:
        """Its table grid and a hash of its tables (floating point may build other tables)."""
        return {"grid": list(astuple(rans.Grid())), "tables": rans.tables().digest}

    def encode(self, stages: list, y_range: tuple[int, int], substreams: int | None) -> np.ndarray:
        sizes = [len(s) for s, _, _ in stages]
        return rans.encode(stages, rans.Grid(), substreams or auto_substreams(sizes))

    def decoder(self, words: np.ndarray, header: dict) -> StageDecoder:
        coder, ours = header.get("coder", {}), self.header()
        if coder.get("grid") != ours["grid"]:
            raise UserError(f"stream uses ŷ coder {coder}, which this orderopt does not read")
        if coder.get("tables") != ours["tables"]:
            raise UserError(
                f"stream was coded with rANS tables {coder.get('tables')}, and this machine builds "
                f"{ours['tables']} (floating point differs): decode it where it was encoded"
            )
        return rans.Decoder(words, rans.Grid())


class _GaussianDecoder:
    """constriction's range decoder under per-symbol quantized Gaussians, as rans.Decoder."""

    def __init__(self, words: np.ndarray, y_range: tuple[int, int]):
        self.dec = constriction.stream.queue.RangeDecoder(words)
        self.gauss = constriction.stream.model.QuantizedGaussian(*y_range)

    def decode(self, means: np.ndarray, stds: np.ndarray) -> np.ndarray:
        return self.dec.decode(self.gauss, means, stds)

    def finished(self) -> bool:
        return True  # a range coder's padding cannot be told from data: the CRC guards it


@register
class GaussianCoder(LatentCoder):
    name = "gaussian"

    def encode(self, stages: list, y_range: tuple[int, int], substreams: int | None) -> np.ndarray:
        enc = constriction.stream.queue.RangeEncoder()
        gauss = constriction.stream.model.QuantizedGaussian(*y_range)
        for symbols, means, stds in stages:
            enc.encode(symbols.astype(np.int32), gauss, means, stds)
        return enc.get_compressed()

    def decoder(self, words: np.ndarray, header: dict) -> StageDecoder:
        return _GaussianDecoder(words, tuple(header["y_range"]))


TABLE_ELEMENTS = 2**20  # probabilities per call of the mixture coder (8 MiB of float64)
# Widest symbol range the mixture coder builds tables over: its work grows with the width, so a
# stream's header must not choose it freely. Trained models' ŷ spans a few hundred values.
MIXTURE_MAX_RANGE = 4096


def check_mixture_range(y_range: tuple[int, int]) -> None:
    width = y_range[1] - y_range[0] + 1
    if width > MIXTURE_MAX_RANGE:
        raise UserError(
            f"ŷ spans {width} values, more than the mixture coder's {MIXTURE_MAX_RANGE}: a corrupt stream, "
            "or latents no trained context model produces"
        )


def mixture_tables(params: tuple[np.ndarray, ...], y_range: tuple[int, int]) -> Iterator[np.ndarray]:
    """The categorical distributions of n latents over the symbols lo..hi, (rows, hi−lo+1)
    float64 arrays of consecutive latents, from their params (flat float64 arrays, stds bounded
    below): the likelihood of every symbol (:func:`orderopt.model.mixture_table`), element by
    element, so that the same params give the same table in any chunk."""
    lo, hi = y_range
    rows = max(1, TABLE_ELEMENTS // (hi - lo + 1))
    for start in range(0, len(params[0]), rows):
        yield mixture_table(tuple(v[start : start + rows] for v in params), lo, hi)


@functools.cache
def probe_digest() -> str:
    """Hash of the tables of fixed probe params (a Gaussian's and K = 3 mixtures'): a stream
    records it, and a machine whose float64 arithmetic builds other tables refuses to decode."""
    rng = np.random.default_rng(0)
    logits, means = rng.normal(0, 2, (3, 64)), rng.normal(0, 8, (3, 64))
    stds = np.maximum(np.exp(rng.normal(0, 1.5, (3, 64))), SCALE_MIN)
    h = hashlib.sha256()
    for params in ((means[0], stds[0]), (*logits, *means, *stds)):
        for table in mixture_tables(params, (-40, 40)):
            h.update(table.tobytes())
    return h.hexdigest()[:16]


class _MixtureDecoder:
    """constriction's range decoder under the categorical tables of :func:`mixture_tables`."""

    def __init__(self, words: np.ndarray, y_range: tuple[int, int]):
        self.dec = constriction.stream.queue.RangeDecoder(words)
        self.cat = constriction.stream.model.Categorical(perfect=False)
        self.range = y_range

    def decode(self, *params: np.ndarray) -> np.ndarray:
        parts = [self.dec.decode(self.cat, table) for table in mixture_tables(params, self.range)]
        return (np.concatenate(parts) if parts else np.zeros(0, np.int32)) + self.range[0]

    def finished(self) -> bool:
        return True  # a range coder's padding cannot be told from data: the CRC guards it


@register
class MixtureCoder(LatentCoder):
    """Mixtures of K Gaussians (and Gaussians, K = 1) through per-symbol probability tables over
    the stream's symbol range: exact for any K, slower than rANS's precomputed tables."""

    name, mixtures = "mixture", True

    def header(self) -> dict:
        return {"probe": probe_digest()}

    def encode(self, stages: list, y_range: tuple[int, int], substreams: int | None) -> np.ndarray:
        check_mixture_range(y_range)
        enc = constriction.stream.queue.RangeEncoder()
        cat = constriction.stream.model.Categorical(perfect=False)
        for symbols, *params in stages:
            mixture_size(params)  # a Gaussian's or a mixture's, nothing else
            start = 0
            for table in mixture_tables(tuple(params), y_range):
                part = symbols[start : start + len(table)] - y_range[0]
                enc.encode(part.astype(np.int32), cat, table)
                start += len(table)
        return enc.get_compressed()

    def decoder(self, words: np.ndarray, header: dict) -> StageDecoder:
        coder = header.get("coder", {})
        if coder.get("probe") != probe_digest():
            raise UserError(
                f"stream was coded with mixture tables {coder.get('probe')}, and this machine builds "
                f"{probe_digest()} (floating point differs): decode it where it was encoded"
            )
        check_mixture_range(tuple(header["y_range"]))
        return _MixtureDecoder(words, tuple(header["y_range"]))
