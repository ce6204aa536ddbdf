import numpy as np
import pytest
import torch

from orderopt import orders as od
from orderopt import tables
from orderopt.context import AnyOrderContext
from orderopt.costs import CostTable, ProxyOracle, bitmask

from .test_costs import CH, M, random_latents


def test_fill_resumably_saves_what_is_done_when_interrupted(tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    oracle = ProxyOracle(AnyOrderContext(3, M, CH).eval(), random_latents())
    table, path = CostTable.from_oracle(oracle), tmp_path / "costs.npz"
    real, calls = oracle.costs, []

    def interrupted(subsets):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(len(subsets))
        return real(subsets)

    oracle.costs = interrupted
    monkeypatch.setattr(tables, "LONG_FILL_S", 0.0)  # every fill "long": the estimate is announced
    with pytest.raises(KeyboardInterrupt):
        tables.fill_resumably(table, path, batch=64, save_every_s=0)
    assert "cost table (511 decoded sets) will take about" in capsys.readouterr().err  # the full set is known
    assert calls == [tables.PROBE_SUBSETS, 64]  # the timed probe first, then a chunk
    assert CostTable.load(path).known.sum() == tables.PROBE_SUBSETS + 64 + 1  # and the full set
    resumed = CostTable.load(path, oracle=oracle)
    oracle.costs = real
    tables.fill_resumably(resumed, path, batch=64, save_every_s=3600)  # saves at the end anyway
    assert CostTable.load(path).complete


def test_open_table_resumes_only_a_table_of_the_same_model_images_and_proxy(tmp_path):
    torch.manual_seed(0)
    oracle = ProxyOracle(AnyOrderContext(2, M, CH).eval(), random_latents())
    path, meta = tmp_path / "costs.npz", {"model_hash": "a", "images_hash": "b", "proxy_hash": "c"}
    table = tables.open_table(oracle, meta, 2, path)
    table.fill([1, 2])
    table.save(path)
    assert tables.open_table(oracle, meta, 2, path).known.sum() == table.known.sum() > 1  # resumed
    other = {**meta, "proxy_hash": "d"}
    assert tables.open_table(oracle, other, 2, path).known.sum() == 1  # another proxy: only the full set
    assert tables.open_table(oracle, meta, 2, path, force=True).known.sum() == 1
    path.write_bytes(b"not a table")
    with pytest.raises(Exception, match="--force"):
        tables.open_table(oracle, meta, 2, path)


def test_scored_sets_are_every_prefix_of_the_orders_and_baselines():
    order = od.DecodingOrder.parse("3,2;1,0")
    sets = tables.scored_sets(2, [order])
    # the prefixes of that order: nothing, {(1,1)}, {(1,1),(1,0)}, and all but (0,0)
    assert {
        0,
        bitmask([(1, 1)], 2),
        bitmask([(1, 1), (1, 0)], 2),
        bitmask([(1, 1), (1, 0), (0, 1)], 2),
    } <= sets
    for base in od.published_orders(2).values():
        assert all(bitmask(sd, 2) in sets for sd, _ in base.schedule())
    assert np.all(np.array(sorted(sets)) < 16)


def test_default_fraction_is_a_surrogate_for_4x4_only():
    assert tables.default_fraction(4) == tables.SURROGATE_FRACTION < 1
    assert tables.default_fraction(2) == tables.default_fraction(3) == 1.0
