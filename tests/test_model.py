import math

import pytest
import torch

from orderopt.errors import UserError
from orderopt.model import (
    LIKELIHOOD_MIN,
    SCALE_MIN,
    FactorizedPrior,
    HyperpriorCodec,
    check_mixture,
    gaussian_bits,
    gaussian_likelihood,
    load_model,
    make_checkpoint,
    mixture_bits,
    mixture_likelihood,
    param_count,
    rd_loss,
)


def test_shapes_and_finite_rates(tiny_model):
    x = torch.rand(2, 3, 128, 64)
    out = tiny_model(x)
    assert out["x_hat"].shape == x.shape
    assert out["y_likelihood"].shape == (2, 12, 8, 4)
    assert out["z_likelihood"].shape == (2, 8, 2, 1)
    loss = rd_loss(out, x, 0.01)
    assert all(torch.isfinite(v) for v in loss.values())
    a = tiny_model.analyze(x)
    assert torch.equal(a.y_hat, a.y_hat.round()) and a.hyper.shape == (2, 24, 8, 4)
    assert a.z_bits.shape == (2,) and (a.z_bits > 0).all()


def test_synthesis_does_not_depend_on_the_latents_layout():
    """Decoders hold ŷ in different memory layouts (the order schedules keep it channels-last),
    and g_s rounds differently in each (at these widths: checked in the assertion's first
    line); the reconstruction must be the same pixels for all of them."""
    torch.manual_seed(0)
    model = HyperpriorCodec(N=32, M=48).eval()
    y = (3 * torch.randn(1, 48, 6, 8)).round()
    last = y.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert not torch.equal(model.g_s(y), model.g_s(last))  # the layouts do round differently
        plain = model.synthesize(y)
        view = model.synthesize(y[0].permute(1, 2, 0).contiguous().permute(2, 0, 1)[None])
        assert torch.equal(plain, model.synthesize(last)) and torch.equal(plain, view)


def test_gaussian_likelihood_sums_to_one():
    values = torch.arange(-40, 41).float()
    for mean, scale in [(0.0, 1.0), (0.3, 2.5), (-1.7, 0.2)]:
        p = gaussian_likelihood(values, torch.tensor(mean), torch.tensor(scale))
        assert math.isclose(float(p.sum()), 1.0, abs_tol=1e-4)


def test_a_gaussian_is_the_mixture_of_one_bit_for_bit():
    """K = 1 takes the Gaussian's own path: the same bits, to the last one (golden streams)."""
    torch.manual_seed(0)
    y, mean, scale = torch.randn(3, 50).round() * 3, torch.randn(3, 50), torch.rand(3, 50) * 3
    assert torch.equal(mixture_bits(y, (mean, scale)), gaussian_bits(y, mean, scale))


def test_mixture_likelihood_is_a_distribution_with_the_gaussian_bounds():
    torch.manual_seed(0)
    values = torch.arange(-60, 61, dtype=torch.float64).view(-1, 1, 1)
    logits, means = (
        2 * torch.randn(3, 4, 5, dtype=torch.float64),
        8 * torch.randn(3, 4, 5, dtype=torch.float64),
    )
    scales = torch.rand(3, 4, 5, dtype=torch.float64) * 4
    scales[0, 0, 0] = 1e-4  # bounded below by SCALE_MIN, as the Gaussian's
    p = mixture_likelihood(values, (*logits, *means, *scales))
    torch.testing.assert_close(p.sum(0), torch.ones(4, 5, dtype=torch.float64), rtol=0, atol=1e-6)
    assert float(p.min()) >= LIKELIHOOD_MIN
    # equal components are that Gaussian; one dominant weight is nearly its component alone
    same = mixture_likelihood(values, (*logits, *means[:1].expand(3, -1, -1), *scales[:1].expand(3, -1, -1)))
    torch.testing.assert_close(same, gaussian_likelihood(values, means[0], scales[0]))
    lone = mixture_likelihood(values, (logits[0] + 100, logits[1], logits[2], *means, *scales))
    torch.testing.assert_close(lone, gaussian_likelihood(values, means[0], scales[0]))
    floor = mixture_likelihood(values, (*logits, *means, *scales.clamp_min(SCALE_MIN)))
    assert torch.equal(p, floor)


def test_mixture_bits_have_gradients_for_every_parameter():
    torch.manual_seed(0)
    y = torch.randn(2, 6).round()
    params = [torch.randn(2, 6, requires_grad=True) for _ in range(6)] + [
        (torch.rand(2, 6) + 0.5).requires_grad_() for _ in range(3)
    ]
    mixture_bits(y, tuple(params)).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in params)


def test_mixture_size_is_checked():
    assert [param_count(k) for k in (1, 2, 3)] == [2, 6, 9]
    for bad in (0, -1, 1.5, "3", True):
        with pytest.raises(UserError, match="integer of at least 1"):
            check_mixture(bad)
    with pytest.raises(ValueError, match="neither a Gaussian's nor a mixture's"):
        mixture_likelihood(torch.zeros(2), (torch.zeros(2),) * 4)


def test_factorized_prior_is_a_distribution():
    prior = FactorizedPrior(3)
    z = torch.arange(-400, 401).float().view(1, 1, 1, -1).expand(1, 3, 1, -1)
    p = prior.likelihood(z)
    assert torch.allclose(p.sum(-1), torch.ones(1, 3, 1), atol=1e-3)


def test_training_step_lowers_loss():
    torch.manual_seed(0)
    model = HyperpriorCodec(8, 8)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.rand(2, 3, 64, 64)
    losses = []
    for _ in range(10):
        loss = rd_loss(model(x), x, 0.01)["loss"]
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0]


def test_checkpoint_round_trip_and_fp16(tmp_path, tiny_model):
    path = tmp_path / "m.pt"
    torch.save(make_checkpoint(tiny_model, 0.02, {"steps": 5}, half=True), path)
    model, meta = load_model(path)
    assert meta["arch"] == {"N": 8, "M": 12} and meta["lmbda"] == 0.02 and meta["training"]["steps"] == 5
    x = torch.rand(1, 3, 64, 64)
    assert torch.allclose(model.analyze(x).hyper, tiny_model.half().float().analyze(x).hyper, atol=1e-5)


def test_shipped_models_load_one_per_quality():
    from orderopt.model import QUALITIES, shipped_quality

    hashes, lmbdas = [], []
    for q, lmbda in QUALITIES.items():
        model, meta = load_model(quality=q)
        assert meta["arch"]["M"] == model.M and len(meta["hash"]) == 16
        assert meta["lmbda"] == lmbda
        assert shipped_quality(meta["hash"]) == q
        hashes.append(meta["hash"])
        lmbdas.append(meta["lmbda"])
    assert len(set(hashes)) == len(QUALITIES) and lmbdas == sorted(lmbdas)
    assert load_model()[1]["hash"] == load_model(quality=2)[1]["hash"]  # the default is the middle one
    assert shipped_quality("0" * 16) is None
    with pytest.raises(UserError, match="not shipped"):
        load_model(quality=7)


def test_bad_checkpoints(tmp_path, tiny_model):
    with pytest.raises(UserError, match="does not exist"):
        load_model(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot be read"):
        load_model(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(UserError, match="not an orderopt base-model checkpoint"):
        load_model(foreign)
    ckpt = make_checkpoint(tiny_model, 0.01, {})
    ckpt["version"] = 99
    torch.save(ckpt, tmp_path / "v.pt")
    with pytest.raises(UserError, match="version 99"):
        load_model(tmp_path / "v.pt")
    ckpt = make_checkpoint(tiny_model, 0.01, {})
    ckpt["state_dict"]["g_a.0.bias"][0] += 1
    torch.save(ckpt, tmp_path / "c.pt")
    with pytest.raises(UserError, match="corrupt"):
        load_model(tmp_path / "c.pt")
    ckpt = make_checkpoint(tiny_model, 0.01, {})
    ckpt["arch"] = {"N": 8, "M": 16}
    torch.save(ckpt, tmp_path / "a.pt")
    with pytest.raises(UserError, match="does not fit"):
        load_model(tmp_path / "a.pt")


def test_shipped_context_models_belong_to_the_shipped_model():
    """After retraining a base model, its proxies and AR model must be retrained too."""
    from orderopt.fit import load_context
    from orderopt.model import QUALITIES, shipped_weights

    for q in QUALITIES:
        _, meta = load_model(quality=q)
        for name in ("proxy_k2", "proxy_k4", "autoregressive"):
            _, cmeta = load_context(shipped_weights(name, q))
            assert cmeta["model_hash"] == meta["hash"], (q, name)
            assert cmeta["latent_channels"] == meta["arch"]["M"]
