import copy

import numpy as np
import pytest
import torch

from orderopt import orders as o
from orderopt.context import AnyOrderContext, MultistageContext, raster_mask
from orderopt.costs import CostTable, ProxyOracle, bitmask
from orderopt.errors import UserError
from orderopt.fit import FitConfig, fit_context, measure
from orderopt.latents import LatentEntry, LatentSet
from orderopt.model import gaussian_bits, mixture_bits
from orderopt.verify import STOP_PATIENCE, dedicated_rate, stop_split

from .conftest import DEVICES

M, CH = 4, 8


def random_latents(n=3, sizes=((8, 8), (9, 6), (7, 10)), seed=0):
    g = torch.Generator().manual_seed(seed)
    entries = []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        y = torch.randint(-3, 4, (M, h, w), generator=g).float()
        y = y + torch.roll(y, 1, 2)  # some spatial correlation for the context to find
        entries.append(LatentEntry(f"img{i}", y, torch.randn(CH, h, w, generator=g), 50.0, h * w * 256))
    return LatentSet(tuple(entries), "test", "test")


@pytest.fixture(scope="module")
def proxy2():
    torch.manual_seed(0)
    return AnyOrderContext(2, M, CH).eval()


def direct_cost(proxy, latents, subset, q):
    """c(S, q) from plain forward passes, image by image."""
    k, total = proxy.patch, 0.0
    for e in latents.entries:
        y, h = e.y_hat[None], e.hyper[None]
        bits = mixture_bits(y, proxy(y, h, subset))[0]  # (means, scales), or a mixture's params
        r, c = divmod(q, k)
        total += float(bits[:, r::k, c::k].sum().detach())
    return total


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("patch, mixture", [(2, 1), (3, 1), (2, 3)])
def test_oracle_equals_direct_forward(patch, mixture, device):
    """The factorised cost table equals plain forward passes, for Gaussian proxies and proxies
    of mixtures of K = 3 alike."""
    torch.manual_seed(patch)
    proxy = AnyOrderContext(patch, M, CH, mixture=mixture).eval()
    latents = random_latents()
    oracle = ProxyOracle(copy.deepcopy(proxy), latents, device=device)
    subsets = [0, 1, 5, (1 << patch**2) - 2, 3]
    table = oracle.costs(subsets, chunk=2)
    for i, s in enumerate(subsets):
        for q in range(patch**2):
            if (s >> q) & 1:
                assert np.isnan(table[i, q])
            else:
                assert table[i, q] == pytest.approx(direct_cost(proxy, latents, s, q), rel=1e-4)


def test_rate_is_sum_of_stage_costs_and_matches_direct(proxy2):
    latents = random_latents()
    table = CostTable.from_oracle(ProxyOracle(proxy2, latents))
    for order in [o.raster(2), o.checkerboard(), o.tinylic_order(), o.DecodingOrder("0,0;0,0")]:
        stages = table.stage_costs(order)
        assert len(stages) == order.num_stages
        assert table.rate(order) == pytest.approx(sum(stages))
        direct = sum(
            direct_cost(proxy2, latents, bitmask(s, 2), r * 2 + c)
            for s, pos in order.schedule()
            for r, c in pos
        )
        assert table.rate(order) == pytest.approx(direct, rel=1e-4)
    n = sum(e.y_hat.numel() for e in latents.entries)
    assert table.bits_per_latent(o.raster(2)) == pytest.approx(table.rate(o.raster(2)) / n)


def test_lazy_fill_and_save_load(tmp_path, proxy2):
    latents = random_latents()
    table = CostTable.from_oracle(ProxyOracle(proxy2, latents), meta={"proxy": "x"})
    table.rate(o.raster(2))
    assert table.known.sum() == 5  # 4 stages + the full set
    path = tmp_path / "t.npz"
    table.save(path)
    loaded = CostTable.load(path)
    assert not loaded.complete and loaded.meta == {"proxy": "x"}
    assert loaded.rate(o.raster(2)) == pytest.approx(table.rate(o.raster(2)))
    with pytest.raises(ValueError, match="no oracle"):
        loaded.rate(o.tinylic_order())
    table.fill(progress=False)
    assert table.complete
    (tmp_path / "bad.npz").write_bytes(b"x")
    with pytest.raises(ValueError, match="cannot be read"):
        CostTable.load(tmp_path / "bad.npz")


def test_latents_smaller_than_patch_rejected(proxy2):
    tiny = LatentSet((LatentEntry("t", torch.zeros(M, 1, 5), torch.zeros(CH, 1, 5), 0.0, 80),), "h", "h")
    with pytest.raises(ValueError, match="smaller than the 2×2 patch"):
        ProxyOracle(proxy2, tiny)


@pytest.mark.parametrize("device", DEVICES)
def test_proxy_and_dedicated_training_learn(device):
    train, held = random_latents(6, seed=1), random_latents(3, seed=2)
    cfg = FitConfig(steps=60, batch=4, crop=4, lr=3e-3, seed=0)
    torch.manual_seed(0)
    proxy = AnyOrderContext(2, M, CH)
    before = CostTable.from_oracle(ProxyOracle(proxy.eval(), held, device=device)).rate(o.raster(2))
    fit_context(proxy, train, cfg, progress=False, device=device)
    after = CostTable.from_oracle(ProxyOracle(proxy, held, device=device)).rate(o.raster(2))
    assert after < before
    torch.manual_seed(0)
    untrained = measure(MultistageContext(o.raster(2), M, CH).to(device), held)
    r = dedicated_rate(o.raster(2), train, held, cfg, progress=False, init=proxy.cpu(), device=device)
    assert 0 < r["bits_per_latent"] < untrained["bits_per_latent"] and len(r["images"]) == 3
    assert r["bits_per_latent"] <= r["start_bits_per_latent"]
    ar = dedicated_rate("autoregressive", train, held, cfg, progress=False, device=device)
    assert ar["bits"] > 0
    with pytest.raises(ValueError, match="unknown dedicated"):
        dedicated_rate("zigzag", train, held, cfg, progress=False)


def test_dedicated_curve_measures_without_changing_the_training():
    """--verify-curve: the held-out rate every N steps, the last point the final model's rate,
    and the trained model bit-for-bit the one trained without the curve."""
    train, held = random_latents(4, seed=1), random_latents(2, seed=2)
    cfg = FitConfig(steps=6, batch=2, crop=4, lr=3e-3, seed=0)
    torch.manual_seed(0)
    proxy = AnyOrderContext(2, M, CH)
    plain = dedicated_rate(o.raster(2), train, held, cfg, progress=False, init=proxy)
    r = dedicated_rate(o.raster(2), train, held, cfg, progress=False, init=proxy, curve_every=2)
    assert "held_out_curve" not in plain
    assert [p["step"] for p in r["held_out_curve"]] == [2, 4, 6]
    assert r["held_out_curve"][-1]["bits_per_latent"] == r["bits_per_latent"] == plain["bits_per_latent"]
    assert r["start_bits_per_latent"] == plain["start_bits_per_latent"]
    assert len({p["bits_per_latent"] for p in r["held_out_curve"]}) == 3  # it trained in between
    # each point also has the training crops' mean rate over its 2 steps (overfitting shows there)
    assert all(p["train_bits_per_latent"] > 0 for p in r["held_out_curve"])


def test_stop_split_is_a_fixed_tenth_of_the_training_images():
    train = random_latents(12, seed=1)
    fit, stop = stop_split(train)
    assert len(stop) == 2 and len(fit) == 10  # ceil(10% of 12)
    assert set(fit.names) | set(stop.names) == set(train.names) and not set(fit.names) & set(stop.names)
    again = stop_split(LatentSet(tuple(reversed(train.entries)), "test", "test"))[1]
    assert sorted(again.names) == sorted(stop.names)  # by name, not by position
    with pytest.raises(UserError, match="too few"):
        stop_split(random_latents(1))


def test_early_stopped_dedicated_model_keeps_its_lowest_weights():
    """--verify-early-stop: the rate on the stopping tenth every N steps; a learning rate that
    only harms stops after STOP_PATIENCE measurements with the proxy's starting weights kept."""
    train, held = random_latents(10, seed=1), random_latents(2, seed=2)
    torch.manual_seed(0)
    proxy = AnyOrderContext(2, M, CH)
    harmful = FitConfig(steps=50, batch=2, crop=4, lr=10.0, seed=0)
    r = dedicated_rate(o.raster(2), train, held, harmful, progress=False, init=proxy, early_stop=2)
    steps = [p["step"] for p in r["stop_curve"]]
    assert steps == [0, 2, 4] and r["steps_run"] == 4 == 2 * STOP_PATIENCE  # stopped, not capped
    assert r["stopped_at"] == 0 and r["bits_per_latent"] == pytest.approx(r["start_bits_per_latent"])
    useful = FitConfig(steps=6, batch=2, crop=4, lr=3e-3, seed=0)
    r = dedicated_rate(o.raster(2), train, held, useful, progress=False, init=proxy, early_stop=2)
    curve = {p["step"]: p["bits_per_latent"] for p in r["stop_curve"]}
    assert r["stopped_at"] == min(curve, key=curve.get) and r["steps_run"] <= 6
    with pytest.raises(ValueError, match="not both"):
        dedicated_rate(o.raster(2), train, held, useful, progress=False, curve_every=2, early_stop=2)


def interrupt_sampling(monkeypatch, at_call: int):
    """Makes the ``at_call``-th crop draw of training raise KeyboardInterrupt (a killed run);
    returns the real draw, to put back."""
    from orderopt import fit

    calls, real_sample = {"n": 0}, fit.LatentCrops.sample

    def interrupted(self, batch):
        calls["n"] += 1
        if calls["n"] == at_call:
            raise KeyboardInterrupt
        return real_sample(self, batch)

    monkeypatch.setattr(fit.LatentCrops, "sample", interrupted)
    return real_sample


def test_fit_resumes_after_interruption(tmp_path, monkeypatch):
    from orderopt import fit

    train, held = random_latents(4, seed=3), random_latents(2, seed=4)
    cfg = FitConfig(steps=230, batch=2, crop=4, seed=1)
    torch.manual_seed(0)
    straight = fit_context(MultistageContext(o.raster(2), M, CH), train, cfg, progress=False)

    ckpt = tmp_path / "c.pt"
    real_sample = interrupt_sampling(monkeypatch, at_call=150)
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        fit_context(MultistageContext(o.raster(2), M, CH), train, cfg, checkpoint=ckpt, progress=False)
    monkeypatch.setattr(fit.LatentCrops, "sample", real_sample)
    assert torch.load(ckpt, weights_only=True)["train_state"]["step"] == 100
    torch.manual_seed(5)  # resuming restores every random state itself
    resumed = fit_context(MultistageContext(o.raster(2), M, CH), train, cfg, checkpoint=ckpt, progress=False)
    assert measure(resumed, held)["bits"] == pytest.approx(measure(straight, held)["bits"], rel=1e-5)


def test_fit_calls_on_step_without_changing_training():
    train, held = random_latents(4, seed=3), random_latents(2, seed=4)
    cfg = FitConfig(steps=6, batch=2, crop=4, seed=1)
    torch.manual_seed(0)
    plain = fit_context(MultistageContext(o.raster(2), M, CH), train, cfg, progress=False)
    torch.manual_seed(0)
    model, curve = MultistageContext(o.raster(2), M, CH), []

    def record(step: int) -> None:  # measuring switches the model to eval mode mid-training
        curve.append((step, measure(model, held)["bits"]))

    fit_context(model, train, cfg, progress=False, on_step=record)
    assert [s for s, _ in curve] == list(range(1, 7))
    assert curve[-1][1] == pytest.approx(measure(plain, held)["bits"], rel=1e-6)


def test_per_image_costs_sum_to_the_totals_and_raster_bits_are_direct(tmp_path, proxy2):
    latents = random_latents()
    oracle = ProxyOracle(proxy2, latents)
    subsets = [0, 1, 6, 9]
    per_image, total = oracle.costs(subsets, per_image=True), oracle.costs(subsets)
    assert per_image.shape == (4, 4, 3)
    np.testing.assert_allclose(np.nansum(per_image, 2), np.nan_to_num(total), rtol=1e-6)  # float32 sums
    assert np.isnan(per_image[1, 0]).all() and np.isfinite(per_image[0]).all()
    expected = []
    for e in latents.entries:
        y, h = e.y_hat[None], e.hyper[None]
        means, scales = proxy2.forward_kernel(y, h, raster_mask(5))
        expected.append(float(gaussian_bits(y, means, scales).sum()))
    np.testing.assert_allclose(oracle.raster_bits(), expected, rtol=1e-5)
    # the table keeps both and saves them
    table = CostTable.from_oracle(oracle)
    order = o.paper_order(2)
    rates = table.image_rates(order)
    assert rates.shape == (3,) and rates.sum() == pytest.approx(table.rate(order), rel=1e-6)
    table.fill_raster()
    table.save(tmp_path / "c.npz")
    back = CostTable.load(tmp_path / "c.npz")
    np.testing.assert_array_equal(back.raster_image_bits, table.raster_image_bits)
    np.testing.assert_array_equal(back.image_rates(order), rates)  # no oracle needed: saved


def test_proxy_trains_on_raster_crops_too():
    """raster_fraction > 0: the loss mixes autoregressive crops (all latents coded) with
    decoded-set crops, and the proxy's raster rate improves with training."""
    torch.manual_seed(0)
    lat = random_latents()
    proxy = AnyOrderContext(2, M, CH)
    before = float(ProxyOracle(copy.deepcopy(proxy), lat).raster_bits().sum())
    fit_context(
        proxy, lat, FitConfig(steps=60, batch=4, crop=6, lr=3e-3, raster_fraction=0.5), progress=False
    )
    after = float(ProxyOracle(proxy, lat).raster_bits().sum())
    assert after < 0.9 * before


def test_lazily_filled_table_saves_itself_for_a_resumed_run(tmp_path, proxy2):
    """Greedy and Optuna fill the table row by row: with autosave, what an interrupted run
    computed is on disk, and a run that loads it computes only what is missing."""
    path = tmp_path / "costs.npz"
    table = CostTable.from_oracle(ProxyOracle(proxy2, random_latents()))
    table.autosave(path, every_s=0)
    table.cost(0, 1)
    table.cost(1, 2)  # the "interruption" comes after this
    back = CostTable.load(path)
    assert back.known[0] and back.known[1] and not back.known[2]
    assert back.table[1, 2] == table.table[1, 2]


def test_large_patches_keep_only_the_rows_they_compute(tmp_path):
    """A 6×6 table has 2^36 rows (18 TiB dense): kept sparse, greedy-sized, saved and loaded."""
    torch.manual_seed(0)
    proxy = AnyOrderContext(6, M, CH).eval()
    lat = random_latents(sizes=((12, 12), (12, 18), (18, 12)))
    table = CostTable.from_oracle(ProxyOracle(proxy, lat))
    order = o.random_order(6, 0)
    direct = direct_cost(proxy, lat, 0, 5)
    assert table.cost(0, 5) == pytest.approx(direct, rel=1e-4)
    rate = table.rate(order)
    assert len(table.table.rows) == 36 and not table.complete
    table.save(tmp_path / "c.npz")
    back = CostTable.load(tmp_path / "c.npz")
    assert back.known[0] and not back.known[3] and back.rate(order) == pytest.approx(rate, rel=1e-12)


def test_small_batches_train_both_kinds_of_context(monkeypatch):
    """raster_fraction 0.25 of a batch of 2 rounds to 0: still one raster crop and one decoded-set crop."""

    calls = {"kernel": 0, "masked": 0}
    proxy = AnyOrderContext(2, M, CH)
    real_k, real_m = proxy.forward_kernel, proxy.forward_masked

    def k(*a):
        calls["kernel"] += a[0].shape[0]
        return real_k(*a)

    def m(*a):
        calls["masked"] += a[0].shape[0]
        return real_m(*a)

    monkeypatch.setattr(proxy, "forward_kernel", k)
    monkeypatch.setattr(proxy, "forward_masked", m)
    y, h = torch.randn(2, M, 8, 8).round(), torch.randn(2, CH, 8, 8)
    proxy.loss_bits(y, h, np.random.default_rng(0), raster_fraction=0.25)
    assert calls == {"kernel": 1, "masked": 1}


def test_mixture_proxy_trains_and_rates_every_schedule():
    """A proxy of K = 3 Gaussians: trains to lower raster and decoded-set rates, its per-image
    costs sum to the totals, and its autoregressive rate is the direct one."""
    torch.manual_seed(0)
    lat = random_latents()
    proxy = AnyOrderContext(2, M, CH, mixture=3)
    table = CostTable.from_oracle(ProxyOracle(copy.deepcopy(proxy), lat))
    before = table.rate(o.paper_order(2)), float(table.oracle.raster_bits().sum())
    fit_context(
        proxy, lat, FitConfig(steps=60, batch=4, crop=6, lr=3e-3, raster_fraction=0.5), progress=False
    )
    oracle = ProxyOracle(proxy, lat)
    table = CostTable.from_oracle(oracle)
    after = table.rate(o.paper_order(2)), float(oracle.raster_bits().sum())
    assert after[0] < 0.9 * before[0] and after[1] < 0.9 * before[1] and np.isfinite(after).all()
    per_image = oracle.costs([0, 6], per_image=True)
    np.testing.assert_allclose(np.nansum(per_image, 2), np.nan_to_num(oracle.costs([0, 6])), rtol=1e-6)
    with torch.no_grad():
        direct = [
            float(
                mixture_bits(
                    e.y_hat[None], proxy.forward_kernel(e.y_hat[None], e.hyper[None], raster_mask(5))
                ).sum()
            )
            for e in lat.entries
        ]
    np.testing.assert_allclose(oracle.raster_bits(), direct, rtol=1e-5)


def test_plateau_drops_the_rate_then_stops_and_tracks_the_lowest():
    from orderopt.fit import Plateau

    p = Plateau(patience=2, min_delta=0.01, drops=1)
    events = [p.update(s, v) for s, v in enumerate([1.0, 0.9, 0.895, 0.893, 0.95, 0.96], start=1)]
    # 0.895 and 0.893 are within 1% of 0.9: no improvement, so the second wait drops the rate
    assert events == ["improved", "improved", "waiting", "drop", "waiting", "stop"]
    assert p.converged and p.dropped == 1 and p.lr_scale == pytest.approx(0.1)
    assert (p.lowest, p.lowest_step, p.best) == (0.893, 4, 0.9)
    for bad in ({"patience": 0}, {"patience": 1, "min_delta": 1.0}, {"patience": 1, "factor": 1.0}):
        with pytest.raises(ValueError):
            Plateau(**bad)


def _plateau_fit(train, held, cfg, checkpoint=None, patience=1, min_delta=0.2):
    from orderopt.fit import HeldOut, Plateau

    model = MultistageContext(o.raster(2), M, CH)
    held_out = HeldOut(
        lambda: {"bits_per_latent": measure(model, held)["bits_per_latent"]},
        every=5,
        plateau=Plateau(patience, min_delta=min_delta, drops=2),
    )
    fit_context(model, train, cfg, checkpoint=checkpoint, progress=False, held_out=held_out)
    return model, held_out


def test_fit_until_plateau_stops_early_and_keeps_the_lowest_weights():
    train, held = random_latents(4, seed=3), random_latents(2, seed=4)
    cfg = FitConfig(steps=500, batch=2, crop=4, seed=1)
    torch.manual_seed(0)
    # a 20% improvement on the starting weights (step 0) never comes: two drops, then stop
    model, held_out = _plateau_fit(train, held, cfg)
    curve = held_out.curve
    assert [p["step"] for p in curve] == [0, 5, 10, 15]
    assert [p["event"] for p in curve] == ["improved", "drop", "drop", "stop"]
    assert [p["lr"] for p in curve] == pytest.approx([1e-3, 1e-4, 1e-5, 1e-5])
    plateau = held_out.plateau
    assert plateau.converged and plateau.lowest == min(p["bits_per_latent"] for p in curve)
    assert measure(model, held)["bits_per_latent"] == pytest.approx(plateau.lowest, rel=1e-6)


def test_fit_until_plateau_resumes_with_its_curve(tmp_path, monkeypatch):
    from orderopt import fit

    train, held = random_latents(4, seed=3), random_latents(2, seed=4)
    cfg = FitConfig(steps=400, batch=2, crop=4, seed=1)
    torch.manual_seed(0)
    straight, straight_curve = _plateau_fit(train, held, cfg, patience=6, min_delta=0.01)
    assert 100 < straight_curve.curve[-1]["step"] < 400  # stopped by the rule, after a checkpoint
    ckpt = tmp_path / "c.pt"
    real_sample = interrupt_sampling(monkeypatch, at_call=120)
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        _plateau_fit(train, held, cfg, checkpoint=ckpt, patience=6, min_delta=0.01)
    monkeypatch.setattr(fit.LatentCrops, "sample", real_sample)
    saved = torch.load(ckpt, weights_only=True)["train_state"]
    assert saved["step"] == 100 and len(saved["curve"]) == 21 and not saved["plateau"]["converged"]
    torch.manual_seed(5)
    # a higher step cap is the same run under a plateau rule
    resumed, resumed_curve = _plateau_fit(
        train, held, FitConfig(**{**cfg.__dict__, "steps": 900}), checkpoint=ckpt, patience=6, min_delta=0.01
    )
    assert [p["step"] for p in resumed_curve.curve] == [p["step"] for p in straight_curve.curve]
    assert [p["event"] for p in resumed_curve.curve] == [p["event"] for p in straight_curve.curve]
    assert measure(resumed, held)["bits"] == measure(straight, held)["bits"]  # exactly the same run
    assert resumed_curve.steps_run == straight_curve.steps_run == straight_curve.curve[-1]["step"]
    # another rule on the same checkpoint is refused, never silently restarted from random weights
    with pytest.raises(UserError, match="other training settings or held-out rule"):
        _plateau_fit(train, held, cfg, checkpoint=ckpt, patience=5, min_delta=0.01)
    with pytest.raises(UserError, match="other training settings"):  # a fixed schedule neither
        fit_context(MultistageContext(o.raster(2), M, CH), train, cfg, checkpoint=ckpt, progress=False)
