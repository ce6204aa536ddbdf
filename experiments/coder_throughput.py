"""Throughput of the entropy coders that every schedule pays, and whether threads help.

Codes 196,608 symbols (a 768×512 image's ŷ: 128 × 48 × 32) under per-symbol quantized
Gaussians, as orderopt.codec does, two ways:
- constriction's range coder with its quantized Gaussian (``--coder gaussian``): encoding,
  decoding, and decoding the same symbols split into 2 substreams decoded by 2 threads (this
  helps only if the coder releases Python's GIL); and, for comparison, decoding under ONE
  fixed categorical model (a tabulated coder's per-symbol cost in constriction);
- orderopt.rans, the codec's default (compiled, table-driven): encoding, and decoding as one
  stage with 1, 2 and 8 substreams (threads decode the substreams in parallel).
Means and scales are drawn to cover the shipped model's range (scales 0.11–8, log-uniform).

Writes results/coder_throughput.{json,md}.   python experiments/coder_throughput.py
"""

from __future__ import annotations

import argparse
import platform
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata

import constriction
import numba
import numpy as np
from outputs import save_results
from scipy import special
from timing import median_seconds

from orderopt import rans

N, LO, HI = 128 * 48 * 32, -40, 40


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=5, help="timings per measurement (median)")
    p.add_argument("--out", default="results", help="output folder")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    means = rng.normal(0, 2, N)
    stds = np.exp(rng.uniform(np.log(0.11), np.log(8), N))
    symbols = np.clip(np.round(means + stds * rng.normal(size=N)), LO, HI).astype(np.int32)
    gauss = constriction.stream.model.QuantizedGaussian(LO, HI)

    def encode(idx):
        enc = constriction.stream.queue.RangeEncoder()
        enc.encode(symbols[idx], gauss, means[idx], stds[idx])
        return enc.get_compressed()

    whole = np.arange(N)
    halves = np.array_split(whole, 2)
    words, half_words = encode(whole), [encode(h) for h in halves]

    def decode(w, idx):
        out = constriction.stream.queue.RangeDecoder(w).decode(gauss, means[idx], stds[idx])
        assert np.array_equal(out, symbols[idx])

    enc_s = median_seconds(lambda: encode(whole), args.repeat, warmup=False)
    dec_s = median_seconds(lambda: decode(words, whole), args.repeat, warmup=False)
    probs = np.diff(special.ndtr((np.arange(LO, HI + 2) - 0.5) / 3.0))
    fixed = constriction.stream.model.Categorical(probs / probs.sum(), perfect=False)
    cat_symbols = np.clip(symbols - LO, 0, HI - LO).astype(np.int32)
    enc = constriction.stream.queue.RangeEncoder()
    enc.encode(cat_symbols, fixed)
    cat_words = enc.get_compressed()
    fixed_s = median_seconds(
        lambda: constriction.stream.queue.RangeDecoder(cat_words).decode(fixed, N), args.repeat, warmup=False
    )
    with ThreadPoolExecutor(2) as pool:
        threads_s = median_seconds(
            lambda: list(pool.map(decode, half_words, halves)), args.repeat, warmup=False
        )
    rans.prepare()
    stage = [(symbols.astype(np.int64), means, stds)]
    rans_rows = {"encode_s": median_seconds(lambda: rans.encode(stage), args.repeat)}
    for substreams in (1, 2, 8):
        w = rans.encode(stage, substreams=substreams)
        assert np.array_equal(rans.Decoder(w).decode(means, stds), symbols)
        rans_rows[f"decode_{substreams}_substreams_s"] = median_seconds(
            lambda w=w: rans.Decoder(w).decode(means, stds), args.repeat
        )
        rans_rows[f"bits_{substreams}_substreams"] = 32 * len(w)
    result = {
        "cpu": platform.processor() or platform.machine(),
        "constriction": metadata.version("constriction"),
        "symbols": N,
        "encode_s": enc_s,
        "decode_s": dec_s,
        "decode_2_substreams_2_threads_s": threads_s,
        "decode_ns_per_symbol": 1e9 * dec_s / N,
        "decode_one_fixed_categorical_s": fixed_s,
        "constriction_bits": 32 * len(words),
        "rans": rans_rows,
        "threads": numba.get_num_threads(),
        "command": "python experiments/coder_throughput.py",
    }
    text = (
        f"# Entropy-coder throughput ({result['cpu']})\n\nRegenerate: `{result['command']}`.\n\n"
        f"{N} symbols under per-symbol quantized Gaussians (constriction range coder): encode "
        f"{1e3 * enc_s:.1f} ms, decode {1e3 * dec_s:.1f} ms ({result['decode_ns_per_symbol']:.0f} ns "
        f"per symbol); the same decoded as 2 substreams by 2 threads: {1e3 * threads_s:.1f} ms "
        f"({dec_s / threads_s:.2f}× speed-up). Under one fixed categorical model: decode "
        f"{1e3 * fixed_s:.1f} ms ({1e9 * fixed_s / N:.0f} ns per symbol).\n\n"
        f"orderopt.rans (compiled table-driven rANS, the codec's default; {result['threads']} threads): "
        f"encode {1e3 * rans_rows['encode_s']:.1f} ms; decode "
        + ", ".join(
            f"{1e3 * rans_rows[f'decode_{p}_substreams_s']:.1f} ms with {p} substream{'s' * (p > 1)} "
            f"({1e9 * rans_rows[f'decode_{p}_substreams_s'] / N:.0f} ns per symbol, "
            f"{rans_rows[f'bits_{p}_substreams'] / (32 * len(words)) - 1:+.2%} size against constriction)"
            for p in (1, 2, 8)
        )
        + ".\n"
    )
    save_results(result, text, args.out, "coder_throughput")
    print(text)


if __name__ == "__main__":
    main()
