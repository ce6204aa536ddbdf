import multiprocessing as mp

import numpy as np
import pytest

from orderopt import orders as o
from orderopt import strategies as st
from orderopt.costs import CostTable


def synthetic_table(k, seed=0):
    """Costs that fall as more neighbours are decoded, with per-position noise."""
    rng = np.random.default_rng(seed)
    n = k * k
    base = rng.uniform(80, 120, n)
    gain = rng.uniform(2, 10, (n, n))
    t = np.full((1 << n, n), np.nan)
    for s in range(1 << n):
        for q in range(n):
            if not (s >> q) & 1:
                t[s, q] = base[q] - sum(gain[q, p] for p in range(n) if (s >> p) & 1)
    return CostTable(k, num_elements=1000, num_pixels=4000, z_bits=100.0, table=t)


@pytest.mark.parametrize("k", [2, 3])
def test_dp_equals_exhaustive(k):
    table = synthetic_table(k, seed=k)
    ranked = st.exhaustive(table)
    assert len(ranked) == (24 if k == 2 else 362880)
    best, bits = st.dp(table)
    assert bits == pytest.approx(ranked[0][1]) and table.rate(best) == pytest.approx(bits)
    assert all(a[1] <= b[1] for a, b in zip(ranked, ranked[1:], strict=False))
    assert len({order for order, _ in ranked}) == len(ranked)  # every order once
    for order, bits in ranked[:: 1 if k == 2 else 997]:  # each rate is the order's own, summed alike
        assert bits == table.rate(order)


def test_exhaustive_refuses_4x4():
    with pytest.raises(ValueError, match="use dp or greedy"):
        st.exhaustive(CostTable(4, 1, 1, 0.0))


@pytest.mark.parametrize("seed", range(4))
def test_greedy_refinement_never_worse_and_close(seed):
    table = synthetic_table(3, seed=seed)
    plain, plain_bits = st.greedy(table, refine=False)
    refined, bits = st.greedy(table)
    assert bits <= plain_bits + 1e-9 and table.rate(refined) == pytest.approx(bits)
    assert bits >= st.dp(table)[1] - 1e-9
    seq = [q for stage in refined.sequence() for q in [stage[0][0] * 3 + stage[0][1]]]
    for i in range(9):  # a local optimum: no pairwise swap helps
        for j in range(i + 1, 9):
            swapped = list(seq)
            swapped[i], swapped[j] = swapped[j], swapped[i]
            assert table.rate(o.DecodingOrder.from_sequence(swapped, 3)) >= bits - 1e-9


def dp_budget(table: CostTable, stages: int) -> tuple[o.DecodingOrder, float]:
    """The best schedule of at most ``stages`` stages, written plainly (dicts, no compilation):
    the reference the compiled :func:`orderopt.strategies.frontier` is checked against."""
    k = table.patch
    if k > 3:
        raise ValueError(f"budgeted schedules are enumerated for k ≤ 3, not {k}")
    if stages < 1:
        raise ValueError(f"a schedule needs at least one stage, got {stages}")
    table.fill()
    n, full = k * k, (1 << (k * k)) - 1
    group_cost = {}  # (S, G) -> Σ_{q∈G} c(S, q)
    best = {0: (0.0, [])}
    for _ in range(min(stages, n)):
        nxt = dict(best)
        for s, (bits, groups) in best.items():
            rest = full & ~s
            g = rest
            while g:
                key = (s, g)
                if key not in group_cost:
                    group_cost[key] = float(sum(table.table[s, q] for q in range(n) if (g >> q) & 1))
                v = bits + group_cost[key]
                t = s | g
                if t not in nxt or v < nxt[t][0]:
                    nxt[t] = (v, [*groups, g])
                g = (g - 1) & rest
        best = nxt
    bits, groups = best[full]
    steps = [[q for q in range(n) if (g >> q) & 1] for g in groups]
    return o.DecodingOrder.from_sequence(steps, k), bits


def test_dp_budget():
    table = synthetic_table(2, seed=5)
    one, bits1 = dp_budget(table, 1)
    assert one == o.DecodingOrder("0,0;0,0") and bits1 == pytest.approx(table.rate(one))
    full, bits4 = dp_budget(table, 4)
    assert bits4 == pytest.approx(st.dp(table)[1])
    two, bits2 = dp_budget(table, 2)
    assert two.num_stages == 2 and bits4 <= bits2 <= bits1
    assert bits2 == pytest.approx(min(table.rate(x) for x in _all_two_stage_schedules()))


def _all_two_stage_schedules():
    for mask in range(1, 15):
        yield o.DecodingOrder([[0 if mask >> (r * 2 + c) & 1 else 1 for c in range(2)] for r in range(2)])


def test_lehmer_code_is_a_bijection():
    import itertools

    seqs = {
        tuple(st.lehmer_to_sequence(list(code) + [0], 4))
        for code in itertools.product(range(4), range(3), range(2))
    }
    assert len(seqs) == 24


def test_optuna_finds_the_2x2_optimum():
    table = synthetic_table(2, seed=7)
    study = st.optuna_search(table.rate, 2, trials=60, seed=0)
    best = st.study_orders(study)[0]
    assert best[1] == pytest.approx(st.dp(table)[1])


def _worker_at_once(storage, seed, barrier):
    import optuna  # imported before the barrier: the race is in creating the study, not in imports

    del optuna
    table = synthetic_table(2, seed=1)
    barrier.wait()
    st.optuna_search(table.rate, 2, trials=15, seed=seed, storage=storage, study_name="shared")


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_three_optuna_workers_started_together_finish_all_trials(tmp_path, kind):
    """Three workers released by one barrier on a fresh storage: none dies creating the
    tables (it did on SQLite: 'table version_info already exists'), all 45 trials complete."""
    import optuna

    storage = (
        f"sqlite:///{tmp_path / 'study.db'}" if kind == "sqlite" else f"journal:{tmp_path / 'study.log'}"
    )
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=_worker_at_once, args=(storage, seed, barrier)) for seed in (1, 2, 3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0
    study = optuna.load_study(study_name="shared", storage=st.open_storage(storage))
    trials = study.get_trials()
    assert len(trials) == 45 and len({t.number for t in trials}) == 45
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)


def brute_force_frontier(table):
    """Best rate with at most T stages, by enumerating every schedule (ordered set partitions)."""
    k = table.patch
    n = k * k
    best = {}

    def walk(decoded, used, bits):
        if decoded == (1 << n) - 1:
            best[used] = min(best.get(used, np.inf), bits)
            return
        rest = ((1 << n) - 1) & ~decoded
        g = rest
        while g:
            cost = sum(table.table[decoded, q] for q in range(n) if (g >> q) & 1)
            walk(decoded | g, used + 1, bits + cost)
            g = (g - 1) & rest

    walk(0, 0, 0.0)
    return [min(v for t, v in best.items() if t <= budget) for budget in range(1, n + 1)]


@pytest.mark.parametrize("k,seed", [(2, 0), (2, 1), (3, 2)])
def test_frontier_is_exact_and_consistent(k, seed):
    table = synthetic_table(k, seed=seed)
    rows = st.frontier(table)
    n = k * k
    assert [t for t, _, _ in rows] == list(range(1, n + 1))
    for t, order, bits in rows:
        assert order.num_stages <= t and table.rate(order) == pytest.approx(bits)
    rates = [bits for _, _, bits in rows]
    assert all(b <= a + 1e-9 for a, b in zip(rates, rates[1:], strict=False))  # never worse with more stages
    assert rates[0] == pytest.approx(table.rate(o.DecodingOrder(np.zeros((k, k), int))))  # hyperprior
    assert rates[-1] == pytest.approx(st.dp(table)[1])
    if k == 2:
        assert rates[1] <= table.rate(o.checkerboard()) + 1e-9
        assert rates == pytest.approx(brute_force_frontier(table))
    else:
        for budget in (2, 3, 5):
            assert rates[budget - 1] == pytest.approx(dp_budget(table, budget)[1])


def test_frontier_refuses_5x5():
    with pytest.raises(ValueError, match="k ≤ 4"):
        st.frontier(CostTable(5, 1, 1, 0.0))


@pytest.mark.parametrize("name", sorted(st.REGISTRY))
@pytest.mark.parametrize("k", [2, 3])
def test_strategy_contract(name, k):
    """Every registered strategy: valid full orders of the table's patch, the best never worse
    than raster, and equal to the exact optimum where the strategy claims exactness."""
    strategy = st.REGISTRY[name]
    assert strategy.name == name and strategy.max_patch >= 2
    if k > strategy.max_patch or (k == 3 and name == "exhaustive"):  # 9! orders: test_dp_equals_exhaustive
        pytest.skip(f"{name} at {k}×{k} is covered elsewhere or out of its range")
    table = synthetic_table(k, seed=11)
    filled = []
    context = st.SearchContext(
        table, objective=table.rate, fill_table=lambda: filled.append(table.fill()), options={"trials": 30}
    )
    result = strategy.search(context)
    assert result.found and isinstance(result.info, dict)
    for order, source in result.found.items():
        assert isinstance(order, o.DecodingOrder) and order.patch == k and order.num_stages == k * k
        assert isinstance(source, str) and source
    best = min(table.rate(order) for order in result.found)
    assert best <= table.rate(o.raster(k)) + 1e-9
    if strategy.full_table:
        assert filled and best == pytest.approx(st.dp(table)[1])
    assert st.auto_strategy(k) in st.REGISTRY


def test_any_cost_function_is_an_oracle_for_every_strategy_and_the_frontier():
    from orderopt.costs import FunctionOracle, Oracle

    reference = synthetic_table(2, seed=3)
    oracle = FunctionOracle(2, lambda s, q: reference.table[s, q], num_elements=1000, num_pixels=4000)
    assert isinstance(oracle, Oracle)
    table = CostTable.from_oracle(oracle)
    assert not table.complete
    assert st.dp(table)[1] == pytest.approx(st.dp(reference)[1])
    assert [r[2] for r in st.frontier(table)] == pytest.approx([r[2] for r in st.frontier(reference)])
    lazy = CostTable.from_oracle(oracle)
    order, bits = st.greedy(lazy)
    assert bits == pytest.approx(reference.rate(order))
    table.fill_images([0, 1])
    assert table.image_costs[0].shape == (4, 1)
