import numpy as np
import pytest

from orderopt import rans
from orderopt.model import SCALE_MIN


def stages_from(rng, sizes, scale_range=(0.01, 200.0)):
    """Symbols drawn from their own Gaussians, over every kind of scale, plus outliers."""
    out = []
    for n in sizes:
        means = rng.normal(0, 20, n)
        stds = np.exp(rng.uniform(*np.log(scale_range), n))
        symbols = np.round(means + stds * rng.standard_normal(n)).astype(np.int64)
        out.append((symbols, means, stds))
    return out


def test_tables_are_valid_distributions():
    t = rans.tables()
    g = t.grid
    assert len(t.start) == len(t.radius) == g.scales * g.offsets
    for i in range(len(t.start)):
        cdf = t.cdf[t.start[i] : t.start[i] + 2 * t.radius[i] + 3]
        assert cdf[0] == 0 and cdf[-1] == 1 << rans.PREC
        assert (np.diff(cdf) >= 1).all()  # every residual, and the escape, stays codable
    assert rans.quantize(np.array([1e-30, 1.0, 1e-30]), 16).tolist() == [1, 14, 1]


@pytest.mark.parametrize("substreams", [1, 2, 5])
def test_round_trip_with_escapes_and_edge_cases(substreams, monkeypatch):
    rng = np.random.default_rng(substreams)
    stages = stages_from(rng, [0, 1, 7, 3000, 20000])
    s, m, d = stages[3]
    s[::97] += rng.integers(-(10**9), 10**9, len(s[::97]))  # escapes of any size
    d[:5] = [0.0, SCALE_MIN / 10, 1e6, np.inf, 1e-30]  # off both ends of the grid
    m[5:10] = [-1e7, 1e7, -0.5, 0.5, 2.5]
    monkeypatch.setattr(rans.Decoder, "PARALLEL_MIN", 5000)  # the last stage goes to threads
    words = rans.encode(stages, substreams=substreams)
    dec = rans.Decoder(words)
    for symbols, means, stds in stages:
        assert not dec.finished() or len(symbols) == 0
        assert np.array_equal(dec.decode(means, stds), symbols)
    assert dec.finished()


def test_size_is_close_to_the_likelihoods():
    """Symbols from the coded Gaussians themselves: the table grid costs well under 1%."""
    rng = np.random.default_rng(0)
    stages = stages_from(rng, [50000], (SCALE_MIN, 40.0))
    s, m, d = stages[0]
    from scipy.stats import norm

    bits = -np.log2(np.maximum(norm.cdf(s + 0.5, m, d) - norm.cdf(s - 0.5, m, d), 1e-300)).sum()
    coded = 32 * len(rans.encode(stages))
    assert bits < coded < 1.005 * bits + 32 * 4


def test_damaged_words_fail_cleanly():
    rng = np.random.default_rng(3)
    stages = stages_from(rng, [2000, 2000])
    words = rans.encode(stages, substreams=2)
    with pytest.raises(rans.StreamError, match="substream"):
        rans.Decoder(words[:-1])
    with pytest.raises(rans.StreamError, match="substream"):
        rans.Decoder(np.array([0], dtype=np.uint32))
    short = words.copy()
    short[1] -= 5  # lengths that agree with a first substream cut short
    end = 3 + int(words[1])
    dec = rans.Decoder(np.delete(short, range(end - 5, end)))
    with pytest.raises(rans.StreamError, match="ended"):
        for _, m, d in stages:
            dec.decode(m, d)
    dec = rans.Decoder(words)
    dec.decode(*stages[0][1:])
    assert not dec.finished()  # half the symbols are still in the words


def test_bad_arguments():
    with pytest.raises(ValueError, match="same length"):
        rans.encode([(np.zeros(3), np.zeros(2), np.ones(3))])
    with pytest.raises(ValueError, match="at least 1"):
        rans.encode([], substreams=0)
    assert rans.encode([]).tolist()[0] == 1
    with pytest.raises(ValueError, match="finite means"):
        rans.encode([(np.zeros(1), np.array([np.nan]), np.ones(1))])
    with pytest.raises(ValueError, match="finite means"):
        rans.encode([(np.array([2**31]), np.zeros(1), np.ones(1))])
