import numpy as np
import pytest

from orderopt import strategies as st
from orderopt import surrogate as sg
from orderopt.costs import CostTable, FunctionOracle, bitmask


def polynomial_cost(k, degree, seed=0):
    """c(S, q) as a random multilinear polynomial of the given degree in S's positions."""
    rng = np.random.default_rng(seed)
    n = k * k
    terms = {}
    for q in range(n):
        others = [p for p in range(n) if p != q]
        terms[q] = [(0, 100.0)] + [
            (sum(1 << p for p in rng.choice(others, size=d, replace=False)), rng.normal(0, 3))
            for d in range(1, degree + 1)
            for _ in range(6)
        ]

    def fn(s, q):
        return sum(c for mask, c in terms[q] if s & mask == mask)

    return fn


def rough_cost(k, seed):
    """A second-degree polynomial cost, and the same plus noise that no fit can follow."""
    noise = np.random.default_rng(seed).normal(0, 2, (1 << (k * k), k * k))
    fn = polynomial_cost(k, degree=2, seed=seed)
    return fn, lambda s, q: fn(s, q) + noise[s, q]


def filled(k, fn, subsets):
    table = CostTable.from_oracle(FunctionOracle(k, fn))
    table.fill(subsets)
    return table


def test_anchor_sets_keep_both_ends_and_a_fraction():
    sets = sg.anchor_sets(3, 0.25, seed=1)
    sizes = [bin(s).count("1") for s in sets]
    assert sets == sorted(sets)
    assert sum(z <= 2 for z in sizes) == 1 + 9 + 36 and sum(z >= 7 for z in sizes) == 36 + 9 + 1
    middle = sum(3 <= z <= 6 for z in sizes)
    assert 0.15 * 420 < middle < 0.35 * 420  # 420 sets of 3 … 6 positions
    assert sg.anchor_sets(3, 0.25, seed=1) == sets and sg.anchor_sets(3, 0.25, seed=2) != sets


def test_interaction_features_count_and_values():
    bits = np.array([[1, 0, 1], [1, 1, 1]], dtype=float)
    f, terms = sg.interaction_features(bits, 2)
    assert f.shape == (2, 1 + 3 + 3) and terms == [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2)]
    assert f[0].tolist() == [1, 1, 0, 1, 0, 1, 0]  # 1, x0, x1, x2, x0x1, x0x2, x1x2
    assert f[1].tolist() == [1] * 7


def test_surrogate_is_exact_on_a_polynomial_of_its_degree():
    k = 3
    fn = polynomial_cost(k, degree=3)
    exact = filled(k, fn, range(1 << 9))
    part = filled(k, fn, sg.anchor_sets(k, 0.5, seed=0))
    assert not part.complete
    approx = sg.surrogate(part, degree=3)
    assert approx.complete
    np.testing.assert_allclose(approx.table, exact.table, rtol=1e-6)


def test_surrogate_keeps_known_rows_and_refuses_too_few():
    k = 3
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 1, (1 << 9, 9))
    part = filled(k, lambda s, q: 50 + noise[s, q], sg.anchor_sets(k, 0.3, seed=0))
    approx = sg.surrogate(part)
    known = np.asarray(part.known)
    np.testing.assert_array_equal(approx.table[known], part.table[known])
    with pytest.raises(ValueError, match="fill more of the table"):
        sg.surrogate(filled(k, lambda s, q: 1.0, [0, 1, 2]))


@pytest.mark.parametrize("seed", range(3))
def test_settle_picks_are_exact_and_match_the_full_table_when_the_fit_is(seed):
    k = 3
    fn, rough = rough_cost(k, seed)

    part = filled(k, rough, sg.anchor_sets(k, 0.5, seed=seed))
    approx, picks, rounds = sg.settle(
        part, lambda t: [st.dp(t)[0], *(o for _, o, _ in st.frontier(t))], part.fill
    )
    known = set(sg.known_sets(part))
    assert rounds >= 1 and all(bitmask(s, k) in known for o in picks for s, _ in o.schedule())
    for o in picks:  # every picked schedule's rate is exact, on the surrogate as on the oracle
        assert approx.rate(o) == pytest.approx(
            sum(rough(bitmask(s, k), r * k + c) for s, p in o.schedule() for r, c in p)
        )
    exact = filled(k, rough, range(1 << 9))
    best, bits = st.dp(exact)
    assert exact.rate(picks[0]) >= bits - 1e-9  # never better than the optimum it approximates

    smooth = filled(k, fn, sg.anchor_sets(k, 0.5, seed=seed))  # where the fit is exact, so is the pick
    _, picks, _ = sg.settle(smooth, lambda t: [st.dp(t)[0]], smooth.fill, degree=2)
    assert filled(k, fn, range(1 << 9)).rate(picks[0]) == pytest.approx(
        st.dp(filled(k, fn, range(1 << 9)))[1]
    )


def test_near_optimal_sets_are_those_on_orders_within_the_margin():
    k = 2
    rng = np.random.default_rng(3)
    noise = rng.normal(0, 5, (16, 4))
    table = filled(k, lambda s, q: 100 + noise[s, q] - 3 * bin(s).count("1"), range(16))
    best, bits = st.dp(table)
    on_best = {bitmask(s, k) for s, _ in best.schedule()} | {15}
    assert set(sg.near_optimal_sets(table, 0.0)) == on_best
    wide = set(sg.near_optimal_sets(table, 1.0))  # every order is within 100% of the best
    assert wide == set(range(16))
    ranked = st.exhaustive(table)
    within = [o for o, b in ranked if b <= bits * 1.01]
    assert set(sg.near_optimal_sets(table, 0.01)) == {
        bitmask(s, k) for o in within for s, _ in o.schedule()
    } | {15}


@pytest.mark.parametrize("seed", range(3))
def test_settle_with_a_margin_finds_the_exact_optimum_where_the_fit_is_rough(seed):
    k = 3
    _, rough = rough_cost(k, seed)

    part = filled(k, rough, sg.anchor_sets(k, 0.5, seed=seed))
    _, picks, _ = sg.settle(part, lambda t: [st.dp(t)[0]], part.fill, margin=0.01)
    exact = filled(k, rough, range(1 << 9))
    assert exact.rate(picks[0]) == pytest.approx(st.dp(exact)[1])
    assert int(np.sum(part.known)) < 512  # it got there without computing every set
