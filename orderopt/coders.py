"""Entropy coders of ŷ, behind one interface and registered by the name a stream records.

A coder codes a schedule's stages in order, each stage a batch of (symbols, means, stds) of
discretized Gaussians, and decodes them stage by stage as the decoder computes each stage's
parameters::

    encode:  stages ──► coder.encode(stages, y_range, substreams) ──► words
    decode:  words ──► coder.decoder(words, header) ──► decode(means, stds) per stage ──► symbols

- ``rans`` (default): :mod:`orderopt.rans`, compiled and table-driven, one call per stage,
  its substreams decoded by parallel threads.
- ``gaussian``: constriction's range coder under per-symbol quantized Gaussians (slower to
  decode, results/coder_throughput.md).

A new coder is one :class:`LatentCoder` subclass with :func:`register`; ``codec --coder``
lists what is registered and ``tests/test_codec.py`` round-trips every one of them.
"""

from __future__ import annotations

from dataclasses import astuple
from typing import Protocol

import constriction
import numpy as np

from . import rans
from .errors import UserError


class StageDecoder(Protocol):
    def decode(self, means: np.ndarray, stds: np.ndarray) -> np.ndarray: ...

    def finished(self) -> bool: ...


class LatentCoder:
    """Codes ŷ's stages; ``header()`` is what a stream records of it besides its name, and
    ``decoder`` refuses words that another version of it wrote."""

    name: str = ""

    def header(self) -> dict:
        return {}

    def encode(self, stages: list, y_range: tuple[int, int], substreams: int | None) -> np.ndarray:
        raise NotImplementedError

    def decoder(self, words: np.ndarray, header: dict) -> StageDecoder:
        raise NotImplementedError


REGISTRY: dict[str, LatentCoder] = {}


def register(cls: type[LatentCoder]) -> type[LatentCoder]:
    REGISTRY[cls.name] = cls()
    return cls


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
