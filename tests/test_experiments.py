"""Known-answer tests of the measurement helpers of experiments/ (BD-rate, ΔPSNR at equal bpp,
the cost-table benchmark's row-level table)."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import base_vs_classic as bvc  # noqa: E402
import bd_rate_contexts as bdc  # noqa: E402


def test_bd_rate_of_a_uniformly_cheaper_curve():
    """A codec that needs 10% fewer bits at every PSNR has a BD-rate of exactly −10%."""
    anchor = [(0.1 * 1.5**i, 26 + 1.2 * i) for i in range(8)]
    test = [(0.9 * r, d) for r, d in anchor[2:5]]  # three points, as our three qualities
    assert bvc.bd_rate(anchor, test) == pytest.approx(-10.0, abs=1e-6)
    assert bdc.bd_rate(
        [r for r, _ in test], [d for _, d in test], [r / 0.9 for r, _ in test]
    ) == pytest.approx(-10.0, abs=1e-6)


def test_bd_rate_needs_overlap():
    anchor = [(0.1 * 1.5**i, 20 + i) for i in range(8)]
    assert bvc.bd_rate(anchor, [(1.0, 40.0), (2.0, 42.0)]) is None  # no common PSNR range


def test_psnr_at_equal_bpp_interpolates_in_log_rate():
    curve = [(0.1, 25.0), (0.4, 31.0)]
    assert bvc.psnr_at(curve, 0.2) == pytest.approx(28.0)  # halfway in log2: 0.1 → 0.2 → 0.4
    assert bvc.psnr_at(curve, 0.05) is None and bvc.psnr_at(curve, 0.5) is None


def test_bootstrap_interval_of_a_constant_is_a_point():
    lo, hi = bvc.bootstrap_ci([1.5] * 10)
    assert lo == hi == 1.5
    assert all(np.isnan(bvc.bootstrap_ci([1.0])))


def test_cost_table_bench_rows_sum_to_the_oracles_table(tmp_path):
    """bench_cost_table's row-level table (cached per position) sums to the oracle's costs,
    and its row sampling is stratified per image and weighted to the full count."""
    import bench_cost_table as bct
    import torch

    from orderopt.context import AnyOrderContext
    from orderopt.costs import ProxyOracle

    from .test_costs import CH, M, random_latents

    torch.manual_seed(0)
    lat = random_latents()
    oracle = ProxyOracle(AnyOrderContext(2, M, CH).eval(), lat)
    blocks = bct.row_level(oracle, tmp_path / "rows")
    again = bct.row_level(oracle, tmp_path / "rows")  # read back from the cache
    assert all(np.array_equal(a, b) for a, b in zip(blocks, again, strict=True))
    sizes = [bct.rows_per_image(lat, 2, q) for q in range(4)]
    assert sizes[0] == [16, 15, 20] and sizes[3] == [16, 12, 15]  # 8×8, 9×6, 7×10 latents
    table = bct.table_from_rows(blocks, sizes, 2)
    np.testing.assert_allclose(table, oracle.costs(range(16)), rtol=1e-6)
    idx, weight = bct.sample_rows([16, 15, 20], 0.5, seed=0)
    assert [int(((idx >= a) & (idx < b)).sum()) for a, b in ((0, 16), (16, 31), (31, 51))] == [8, 8, 10]
    assert weight[idx].sum() == pytest.approx(51)


SCRIPTS = sorted(
    p
    for p in (Path(__file__).resolve().parents[1] / "experiments").glob("*.py")
    if p.stem not in ("outputs", "timing", "results_index")  # helpers, and the index (no options)
)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_every_experiment_script_imports_and_explains_its_options(script, capsys, monkeypatch):
    """Each script still imports against the package (a renamed function breaks it here, not
    in the next regeneration of results/) and its --help names its options."""
    import runpy

    monkeypatch.setattr(sys, "argv", [script.name, "--help"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(script), run_name="__main__")
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:") and "--help" in out
