"""Context models must never look at latents that are not decoded yet."""

import numpy as np
import pytest
import torch

from orderopt import context as ctx
from orderopt import orders as o
from orderopt.context import (
    AnyOrderContext,
    AutoregressiveContext,
    MultistageContext,
    init_from_proxy,
    raster_mask,
    subset_mask,
)
from orderopt.decoding import DecodingState

from .conftest import DEVICES

M, CH = 3, 6


def grad_support(model_fn, y, i, j):
    """Latent positions (H×W bool) whose value influences the parameters predicted at (i, j)."""
    y = y.clone().requires_grad_(True)
    params = model_fn(y)  # (means, scales), or a mixture's 3K tensors
    sum(v[0, :, i, j].sum() for v in params).backward()
    return (y.grad[0].abs().sum(0) > 0).numpy()


def window(h, w, i, j, half=2):
    win = np.zeros((h, w), bool)
    win[max(0, i - half) : i + half + 1, max(0, j - half) : j + half + 1] = True
    return win


def randomize(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model


ORDERS = [
    o.random_order(2, 0),
    o.random_order(3, 1),
    o.random_order(4, 2),
    o.checkerboard(),
    o.paper_order(4),
    o.DecodingOrder("0,1,1;2,0,2;1,2,0"),
]


@pytest.mark.parametrize("order", ORDERS, ids=str)
def test_multistage_sees_exactly_decoded_neighbours(order):
    model = randomize(MultistageContext(order, M, CH))
    h, w = 9, 10  # not multiples of the patch: partial patches at the edges
    y, hyper = torch.randn(1, M, h, w), torch.randn(1, CH, h, w)
    stage = order.stage_map(h, w)
    for i in range(h):
        for j in range(w):
            support = grad_support(lambda v: model(v, hyper), y, i, j)
            expected = (stage < stage[i, j]) & window(h, w, i, j)
            np.testing.assert_array_equal(support, expected, err_msg=f"latent ({i}, {j})")


@pytest.mark.parametrize("kind", ["multistage", "autoregressive", "anyorder"])
def test_mixture_models_are_as_causal_as_gaussian_ones(kind):
    """K = 3: every one of the 3K outputs at a latent sees exactly what the Gaussian model's
    (means, scales) see: the decoded latents of its window."""
    h, w, order, subset = 6, 7, o.paper_order(2), 0b0110
    spec = {"multistage": {"order": str(order)}, "anyorder": {"patch": 2}}.get(kind, {})
    model = randomize(ctx.build(kind, M, CH, mixture=3, **spec))
    y, hyper = torch.randn(1, M, h, w), torch.randn(1, CH, h, w)
    assert model.mixture == 3 and [v.shape for v in model(y, hyper)] == [y.shape] * 9
    if kind == "anyorder":
        decoded = subset_mask(subset, 2, h, w).bool().numpy()
        fn, seen = (lambda v: model(v, hyper, subset)), (lambda i, j: decoded)
    else:
        rank = order.stage_map(h, w) if kind == "multistage" else np.arange(h * w).reshape(h, w)
        fn, seen = (lambda v: model(v, hyper)), (lambda i, j: rank < rank[i, j])
    for i in range(h):
        for j in range(w):
            if kind != "anyorder" or not decoded[i, j]:
                np.testing.assert_array_equal(grad_support(fn, y, i, j), seen(i, j) & window(h, w, i, j))


@pytest.mark.parametrize("order", ORDERS[:3], ids=str)
def test_perturbing_undecoded_latents_changes_nothing(order):
    model = randomize(MultistageContext(order, M, CH)).eval()
    h, w = 8, 8
    y, hyper = torch.randn(1, M, h, w), torch.randn(1, CH, h, w)
    stage = torch.from_numpy(order.stage_map(h, w))
    means, scales = model(y, hyper)
    for t in range(order.num_stages):
        y2 = torch.where(stage >= t, y + torch.randn_like(y) * 5, y)
        m2, s2 = model(y2, hyper)
        here = stage == t
        assert torch.allclose(m2[..., here], means[..., here]) and torch.allclose(
            s2[..., here], scales[..., here]
        )
        if t > 0:
            y3 = torch.where(stage == t - 1, y + 1.0, y)
            assert not torch.allclose(model(y3, hyper)[0][..., here], means[..., here])


def test_autoregressive_is_raster_causal():
    model = randomize(AutoregressiveContext(M, CH))
    h, w = 7, 8
    y, hyper = torch.randn(1, M, h, w), torch.randn(1, CH, h, w)
    raster = np.arange(h * w).reshape(h, w)
    for i in range(h):
        for j in range(w):
            support = grad_support(lambda v: model(v, hyper), y, i, j)
            win = window(h, w, i, j)
            np.testing.assert_array_equal(support, (raster < raster[i, j]) & win)


@pytest.mark.parametrize("patch", [2, 3])
def test_anyorder_sees_exactly_the_decoded_set(patch):
    model = randomize(AnyOrderContext(patch, M, CH))
    h, w = 7, 8
    y, hyper = torch.randn(1, M, h, w), torch.randn(1, CH, h, w)
    rng = np.random.default_rng(0)
    for subset in rng.integers(0, 1 << patch**2, 4):
        decoded = subset_mask(int(subset), patch, h, w).bool().numpy()
        for i, j in [(0, 0), (3, 4), (6, 7), (2, 5)]:
            if decoded[i, j]:
                continue
            support = grad_support(lambda v, s=int(subset): model(v, hyper, s), y, i, j)
            np.testing.assert_array_equal(support, decoded & window(h, w, i, j))


@pytest.mark.parametrize("patch", [2, 4])
def test_anyorder_with_the_raster_mask_is_raster_causal(patch):
    """The proxy evaluated with the autoregressive tap mask sees exactly the causal half of
    every latent's window, as the dedicated autoregressive model does."""
    model = randomize(AnyOrderContext(patch, M, CH))
    h, w = 7, 8
    y, hyper = torch.randn(1, M, h, w), torch.randn(1, CH, h, w)
    raster = np.arange(h * w).reshape(h, w)
    for i in range(h):
        for j in range(w):
            support = grad_support(lambda v: model.forward_kernel(v, hyper, raster_mask(5)), y, i, j)
            np.testing.assert_array_equal(support, (raster < raster[i, j]) & window(h, w, i, j))


def test_anyorder_kernel_form_equals_decoded_set_form():
    """A tap mask that is a periodic decoded set's gives the masked forward's parameters at
    the undecoded latents: one network, two ways of saying which taps are decoded."""
    model = randomize(AnyOrderContext(2, M, CH))
    y, hyper = torch.randn(1, M, 8, 8), torch.randn(1, CH, 8, 8)
    subset = 0b0001  # position (0, 0) decoded; latents at (1, 1) see it at the four corners
    kernel = torch.zeros(5, 5)
    kernel[1::2, 1::2] = 1  # from (1, 1): offsets (±1, ±1) land on position (0, 0)
    a, b = model(y, hyper, subset), model.forward_kernel(y, hyper, kernel)
    for x, z in zip(a, b, strict=True):
        torch.testing.assert_close(x[:, :, 3:6:2, 3:6:2], z[:, :, 3:6:2, 3:6:2])


@pytest.mark.parametrize("order", ORDERS, ids=str)
@pytest.mark.parametrize("size", [(8, 8), (9, 11), (3, 5)])
def test_strided_and_fused_equal_naive(order, size):
    model = randomize(MultistageContext(order, M, CH))
    y = torch.randn(2, M, *size)
    naive = model.context_naive(y)
    torch.testing.assert_close(model.context_strided(y), naive, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.context_fused(y), naive, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.context_unfolded(y), naive, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the cached fused kernel gives the same
        torch.testing.assert_close(model.context_fused(y), naive, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("form", ["strided", "fused", "unfolded"])
def test_every_form_gives_the_same_gradients(form):
    """Training through any form gives the naive form's gradients, none on masked taps."""
    model = randomize(MultistageContext(o.paper_order(2), M, CH))
    y = torch.randn(2, M, 7, 6)
    model.context_naive(y).square().sum().backward()
    want = model.weight.grad.clone()
    model.zero_grad()
    getattr(model, f"context_{form}")(y).square().sum().backward()
    torch.testing.assert_close(model.weight.grad, want, rtol=1e-4, atol=1e-4)
    assert torch.all(model.weight.grad[model.mask.expand_as(model.weight) == 0] == 0)


@pytest.mark.parametrize("device", DEVICES)
def test_context_on_device_equals_cpu(device):
    model = randomize(MultistageContext(o.paper_order(4), M, CH)).eval()
    y = torch.randn(1, M, 9, 11)
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        want = model.context_naive(y)
        got = model.to(device).context(y.to(device)).cpu()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("order", [o.paper_order(2), o.random_order(3, 4), o.paper_order(4)], ids=str)
@pytest.mark.parametrize("grad", [True, False])
def test_stage_params_match_full_forward(order, grad):
    """What a decoder computes per stage (only the taps that see decoded latents, first stage
    included, where there are none) equals the full forward pass, at every position."""
    k = order.patch
    model = randomize(MultistageContext(order, M, CH))
    y, hyper = torch.randn(2, M, 9, 7), torch.randn(2, CH, 9, 7)
    with torch.set_grad_enabled(grad):
        means, scales = model(y, hyper)
        positions = [(r, c) for r in range(k) for c in range(k)]
        stages = model.stage_params(y, hyper, positions)
        for (r, c), (m, s) in zip(positions, stages, strict=True):
            torch.testing.assert_close(m, means[:, :, r::k, c::k])
            torch.testing.assert_close(s, scales[:, :, r::k, c::k])


def test_bfloat16_stages_approximate_float32_and_fill_in_decoded_latents():
    """A decoder in bfloat16 computes the same model to bfloat16's precision, returns float32,
    and sees exactly the latents put into it (stage by stage, as a decoder fills them in)."""
    order = o.paper_order(2)
    model = randomize(MultistageContext(order, M, CH)).eval()
    y, hyper = torch.randn(1, M, 6, 5).round(), torch.randn(1, CH, 6, 5)
    with torch.no_grad():
        full = DecodingState(model, hyper)
        full.load(y)
        halves = DecodingState(model, hyper, torch.bfloat16)
        for t in range(order.num_stages):
            for r, c in order.stage_positions(t):
                want, got = full.params(r, c), halves.params(r, c)
                for w, g in zip(want, got, strict=True):
                    assert g.dtype == torch.float32
                    torch.testing.assert_close(g, w, rtol=0.05, atol=0.05)
            for r, c in order.stage_positions(t):
                halves.put(r, c, y[:, :, r::2, c::2].flatten(2).transpose(1, 2))
    assert torch.equal(halves.buffer.float(), full.buffer)


@pytest.mark.parametrize("patch", [2, 4])
def test_proxy_stage_params_match_the_masked_pass(patch):
    """The proxy at one stage's latents (strided) equals its full masked pass there, borders
    included, for a decoded set of mixed positions."""
    proxy = randomize(AnyOrderContext(patch, M, CH)).eval()
    y, hyper = torch.randn(2, M, 9, 7), torch.randn(2, CH, 9, 7)
    decoded = 0b0110 if patch == 2 else 0b1010_0110_0001_1001
    mask = subset_mask(decoded, patch, 9, 7)[None, None].expand(2, 1, 9, 7)
    with torch.no_grad():
        means, scales = proxy.forward_masked(y, hyper, mask)
        positions = [(r, c) for r in range(patch) for c in range(patch) if not decoded >> (r * patch + c) & 1]
        got = proxy.stage_params(y, hyper, mask, positions, proxy.entropy.hyper_in(hyper))
    for (r, c), (m, s) in zip(positions, got, strict=True):
        torch.testing.assert_close(m, means[:, :, r::patch, c::patch], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(s, scales[:, :, r::patch, c::patch], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("patch, taps", [(2, 32), (4, 192)])
def test_stages_multiply_only_by_the_taps_that_see_decoded_latents(patch, taps):
    """The figures the README quotes: 32 of the 2×2 paper order's 100 kernel taps, 192 of the
    4×4 order's 400; the first stage has none."""
    order = o.paper_order(patch)
    model = MultistageContext(order, M, CH)
    per_position = model.tap_matrices()
    assert sum(len(t) for t, _ in per_position) == int(model.mask.sum()) == taps
    (r, c), *_ = order.stage_positions(0)
    assert per_position[r * patch + c] == ([], None)


def test_masked_weight_cache_follows_weight_changes():
    model = randomize(MultistageContext(o.paper_order(2), M, CH)).eval()
    y = torch.randn(1, M, 6, 6)
    with torch.no_grad():
        first = model.context(y)
        model.weight.mul_(2.0)  # in place, as an optimizer step or load_state_dict does
        second = model.context(y)
        torch.testing.assert_close(second, model.context_naive(y))
    assert not torch.allclose(first, second)


@pytest.mark.parametrize("order", [o.random_order(2, 3), o.checkerboard(), o.paper_order(4)], ids=str)
def test_init_from_proxy_equals_proxy_along_the_order(order):
    """Away from the borders, a dedicated model started from the proxy predicts exactly what the
    proxy predicts for each latent given the set decoded before its stage."""
    k = order.patch
    proxy = randomize(AnyOrderContext(k, M, CH))
    model = MultistageContext(order, M, CH)
    init_from_proxy(model, proxy)
    torch.manual_seed(0)
    y, h = torch.randn(1, M, 12, 12).round(), torch.randn(1, CH, 12, 12)
    with torch.no_grad():
        means, scales = model(y, h)
        stages = np.array(order.stages)
        for r in range(k):
            for c in range(k):
                subset = int(sum(1 << int(p) for p in np.flatnonzero(stages.ravel() < stages[r, c])))
                pm, ps = proxy(y, h, subset)
                inner = (slice(None), slice(None), slice(4 + r, 8, k), slice(4 + c, 8, k))
                torch.testing.assert_close(means[inner], pm[inner], atol=1e-4, rtol=1e-4)
                torch.testing.assert_close(scales[inner], ps[inner], atol=1e-4, rtol=1e-4)


def test_init_from_proxy_other_shapes():
    proxy = randomize(AnyOrderContext(4, M, CH))
    y, h = torch.randn(1, M, 8, 8), torch.randn(1, CH, 8, 8)
    for model in (MultistageContext(o.checkerboard(), M, CH), MultistageContext(o.hyperprior_only(), M, CH)):
        init_from_proxy(model, proxy)  # a 2×2 and a 1×1 order tile the 4×4 patch
        assert torch.isfinite(model(y, h)[0]).all()
        torch.testing.assert_close(model.weight[0], proxy.conv.weight[:, :M] * model.mask[0, 0])
    ar = AutoregressiveContext(M, CH)
    init_from_proxy(ar, proxy)
    assert torch.isfinite(ar(y, h)[1]).all()
    with pytest.raises(ValueError, match="cannot initialise a 3×3"):
        init_from_proxy(MultistageContext(o.random_order(3, 0), M, CH), proxy)


SPECS = {"multistage": {"order": "0,1;2,3"}, "anyorder": {"patch": 2}}  # what each kind needs


@pytest.mark.parametrize("mixture", [1, 3])
@pytest.mark.parametrize("kind", sorted(ctx.KINDS))
def test_every_registered_kind_rebuilds_from_its_spec_and_decodes_as_it_rates(kind, mixture):
    """The family contract: a kind builds from the spec its models record, and its decoder's
    stages, fed the true ŷ stage by stage, give exactly the parameters its forward pass rates
    those latents with (the proxy: given each stage's decoded set), Gaussians and mixtures of
    K = 3 alike; a Gaussian's spec says nothing of K, as it never did."""
    torch.manual_seed(0)
    model = randomize(ctx.build(kind, M, CH, mixture=mixture, **SPECS.get(kind, {}))).eval()
    spec = model.spec()
    assert spec.get("mixture", 1) == mixture and ("mixture" in spec) == (mixture > 1)
    again = ctx.build(spec.pop("kind"), M, CH, **spec)
    assert type(again) is type(model) and again.spec() == model.spec() and again.mixture == mixture
    y = torch.randint(-3, 4, (1, M, 6, 8)).float()
    h = torch.randn(1, CH, 6, 8)
    order = o.DecodingOrder.parse("0,2;1,3")
    sched = model.schedule(order, 6, 8)
    if not model.takes_order:
        ref = model(y, h)
    latents = sched.new_latents(M, y.device)
    with torch.no_grad():
        for t in range(sched.num_stages):
            params = sched.params(latents, h, t)
            if model.takes_order:  # the proxy, given the set decoded before stage t
                decoded = sum(1 << (r * 2 + c) for r, c in order.decoded_before(t))
                ref = model(y, h, decoded)
            assert len(params) == len(ref) == (2 if mixture == 1 else 9)
            for got, want in zip(params, ref, strict=True):
                torch.testing.assert_close(got, sched.take(want, t), rtol=1e-5, atol=1e-5)
            sched.put(latents, t, sched.take(y, t))
    assert torch.equal(latents, y)


def test_a_proxy_initialises_only_a_model_of_its_own_k():
    proxy = randomize(AnyOrderContext(2, M, CH, mixture=3))
    model = MultistageContext(o.checkerboard(), M, CH, mixture=3)
    init_from_proxy(model, proxy)
    torch.testing.assert_close(model.entropy.rest[3].weight, proxy.entropy.rest[3].weight)
    with pytest.raises(ValueError, match="K = 3, the dedicated model of K = 1"):
        init_from_proxy(MultistageContext(o.checkerboard(), M, CH), proxy)
