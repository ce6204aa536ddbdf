"""The exported module computes what orderopt's multistage model computes, and is causal."""

import ast
import importlib.util
import json

import pytest
import torch

from orderopt import orders as o
from orderopt.context import AnyOrderContext, MultistageContext
from orderopt.errors import UserError, run_cli
from orderopt.export import MODULE_FILE, main
from orderopt.fit import load_context, save_context

M, CH = 6, 12
ORDERS = [o.paper_order(4), o.paper_order(2)]


def save(model, path, **meta):
    save_context(model, path, {"latent_channels": M, "hyper_channels": CH, **meta})
    return path


def multistage_checkpoint(tmp_path, order, seed=0):
    """A multistage model with random weights and biases (zero biases would hide mix-ups)."""
    torch.manual_seed(seed)
    model = MultistageContext(order, M, CH)
    with torch.no_grad():
        model.bias.normal_(0, 0.5)
    return save(model, tmp_path / f"ms{order.patch}.pt", kind="multistage", order=str(order))


def load_module(path, name="exported_multistage_context"):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: threads only add synchronisation, which costs seconds on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=ORDERS, ids=str)
def exported(request, tmp_path_factory):
    """(order, orderopt's model, the exported model with weights.pt loaded, its module, folder)."""
    order, tmp = request.param, tmp_path_factory.mktemp("export")
    ckpt = multistage_checkpoint(tmp, order)
    assert main([str(order), "--context", str(ckpt), "--out", str(tmp / "out")]) == 0
    module = load_module(tmp / "out" / MODULE_FILE, f"exported_{order.patch}")
    model = module.MultistageContextModel().eval()
    model.load_state_dict(torch.load(tmp / "out" / "weights.pt", weights_only=True))
    return order, load_context(ckpt)[0], model, module, tmp / "out"


def latents(height=16, width=16, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(-6, 7, (batch, M, height, width), generator=g).float()
    return y, torch.randn(batch, CH, height, width, generator=g)


def test_the_module_imports_torch_only(exported):
    *_, out = exported
    text = (out / MODULE_FILE).read_text()
    imported = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "collections", "torch"}
    assert "import orderopt" not in text and "from orderopt" not in text


@pytest.mark.parametrize("size", [(16, 16), (13, 10)], ids=["whole-patches", "partial-patches"])
def test_forward_equals_orderopt(exported, size):
    _, reference, model, *_ = exported
    y, hyper = latents(*size)
    with torch.no_grad():
        expected, got = reference(y, hyper), model(y, hyper)
    for a, b in zip(expected, got, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)


def test_forward_trains_every_weight_but_the_masked_taps(exported):
    _, _, model, *_ = exported
    _, hyper = latents(8, 8, batch=1)
    y = torch.randn(1, M, 8, 8, generator=torch.Generator().manual_seed(3))  # no zeros, no dead taps
    means, scales = model(y, hyper)
    (means.sum() + scales.square().sum()).backward()
    for conv in model.context_prediction:
        assert torch.equal(conv.weight.grad != 0, (conv.mask != 0).expand_as(conv.weight))
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.entropy_parameters.parameters())
    model.zero_grad(set_to_none=True)


def test_stages_equal_orderopts_decoder(exported):
    order, reference, model, *_ = exported
    y, hyper = latents(12, 12)
    with torch.no_grad():
        for t in range(order.num_stages):
            positions = list(order.stage_positions(t))
            parts = reference.stage_params(y, hyper, positions)
            expected = [torch.cat([v[i].flatten(2) for v in parts], 2) for i in (0, 1)]
            for a, b in zip(expected, model.stage_params(y, hyper, t), strict=True):
                torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_later_stages_are_never_read(exported):
    """Perturbing any latent of stage ≥ t leaves stage t's parameters exactly as they were;
    perturbing stage t − 1 changes them (the masks do see the earlier stages)."""
    order, _, model, *_ = exported
    y, hyper = latents(12, 12)
    stage = torch.from_numpy(order.stage_map(12, 12))
    noise = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)) * 5
    with torch.no_grad():
        means, scales = model(y, hyper)
        for t in range(order.num_stages):
            here = stage == t
            m2, s2 = model(torch.where(stage >= t, y + noise, y), hyper)
            assert torch.equal(m2[..., here], means[..., here]) and torch.equal(
                s2[..., here], scales[..., here]
            )
            p2 = model.stage_params(torch.where(stage >= t, y + noise, y), hyper, t)
            assert torch.equal(p2[0], model.gather_stage(means, t))
            if t > 0:
                m3, _ = model(torch.where(stage == t - 1, y + 1, y), hyper)
                assert not torch.equal(m3[..., here], means[..., here])


def test_the_stage_loop_reproduces_the_forward_pass(exported):
    """decompress, fed the true ŷ of each stage, rebuilds ŷ and asks with exactly the forward
    pass's means and scales; compress asks with the same ones and returns what it coded."""
    order, _, model, *_ = exported
    y, hyper = latents(13, 10)
    with torch.no_grad():
        means, scales = model(y, hyper)
    asked = {}

    def decode(t, m, s):
        asked[t] = (m, s)
        return model.gather_stage(y, t)

    assert torch.equal(model.decompress(hyper, decode), y)
    assert sorted(asked) == list(range(order.num_stages))
    for t, (m, s) in asked.items():
        assert torch.equal(m, model.gather_stage(means, t)) and torch.equal(s, model.gather_stage(scales, t))

    unrounded = y + torch.rand(y.shape, generator=torch.Generator().manual_seed(2)) - 0.5
    coded = {}

    def encode(t, y_stage, m, s):
        coded[t] = (m, s)
        return torch.round(y_stage)

    assert torch.equal(model.compress(unrounded, hyper, encode), torch.round(unrounded))
    for t in range(order.num_stages):
        assert all(torch.equal(a, b) for a, b in zip(coded[t], asked[t], strict=True))


def test_stage_masks_cover_every_latent_once(exported):
    order, _, model, *_ = exported
    masks = model.stage_masks(13, 10)
    assert masks.shape == (order.num_stages, 13, 10)
    assert torch.equal(masks.sum(0), torch.ones(13, 10, dtype=torch.long))
    assert torch.equal(masks.int().argmax(0), torch.from_numpy(order.stage_map(13, 10)))
    y, _ = latents(13, 10)
    for t in range(order.num_stages):
        assert torch.equal(model.gather_stage(y, t).sort(2).values, y[..., masks[t]].sort(2).values)


def test_masks_json_holds_the_orders_masks(exported):
    order, _, model, module, out = exported
    doc = json.loads((out / "masks.json").read_text())
    assert o.DecodingOrder.parse(doc["order"]) == order and doc["stages"] == order.stages.tolist()
    assert doc["kernel_size"] == 5
    k = order.patch
    for r in range(k):
        for c in range(k):
            expected = order.kernel_mask(r, c, 5)
            assert (torch.tensor(doc["masks"][r][c]).bool().numpy() == expected).all()
            assert (module.context_mask(module.STAGES, r, c).numpy() == expected).all()
            assert (model.context_prediction[r * k + c].mask[0, 0].bool().numpy() == expected).all()
    listed = [tuple(p) for stage in doc["stage_positions"] for p in stage]
    assert sorted(listed) == [(r, c) for r in range(k) for c in range(k)]
    for t, positions in enumerate(doc["stage_positions"]):
        assert [tuple(p) for p in positions] == list(order.stage_positions(t))
    assert module.ORDER == str(order) and module.STAGES == tuple(map(tuple, order.stages.tolist()))


def test_weights_of_another_order_are_refused(exported):
    order, _, _, module, out = exported
    other = o.checkerboard() if order.patch == 2 else o.raster(4)
    model = module.MultistageContextModel(stages=other.stages.tolist())
    with pytest.raises(RuntimeError, match="another decoding order"):
        model.load_state_dict(torch.load(out / "weights.pt", weights_only=True))


def test_order_from_the_checkpoint_and_random_weights_without_one(tmp_path):
    ckpt = multistage_checkpoint(tmp_path, o.checkerboard())
    assert main(["--context", str(ckpt), "--out", str(tmp_path / "a")]) == 0
    module = load_module(tmp_path / "a" / MODULE_FILE)
    assert module.ORDER == "0,1;1,0" and (module.LATENT_CHANNELS, module.HYPER_CHANNELS) == (M, CH)

    assert (
        main(["paper2", "--out", str(tmp_path / "a"), "--latent-channels", "4", "--framework", "torch"]) == 0
    )
    assert not (tmp_path / "a" / "weights.pt").exists()  # the checkerboard's weights went
    text = (tmp_path / "a" / MODULE_FILE).read_text()
    doc = ast.get_docstring(ast.parse(text))
    assert "compressai" not in doc.lower() and "any entropy coder" in doc
    model = load_module(tmp_path / "a" / MODULE_FILE, "random").MultistageContextModel()
    y, hyper = torch.zeros(1, 4, 6, 6), torch.zeros(1, 8, 6, 6)  # hyper channels default to 2M
    assert model(y, hyper)[0].shape == (1, 4, 6, 6)

    main(["paper2", "--out", str(tmp_path / "b"), "--latent-channels", "4"])
    compressai = (tmp_path / "b" / MODULE_FILE).read_text()
    assert "GaussianConditional" in compressai and "mbt2018-mean" in compressai
    body = text.index("from __future__")  # the code is the same for both frameworks
    assert compressai[compressai.index("from __future__") :] == text[body:]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["0,1;1"], "order rows have different lengths"),
        (["0,2;2,3"], "missing [1]"),
        (["sideways"], "cannot parse order"),
        ([], "give ORDER, or --context"),
        (["0,1;1,0", "--context", "MS"], "not of 0,1;1,0"),
        (["--context", "PX"], "of kind 'anyorder', not a multistage model"),
        (["--context", "MS", "--latent-channels", "7"], "latent-channels 6, not 7"),
        (["0", "--latent-channels", "0"], "must be at least 1"),
        (["0", "--framework", "jax"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    paths = {
        "MS": str(multistage_checkpoint(tmp_path, o.paper_order(2))),
        "PX": str(save(AnyOrderContext(2, M, CH), tmp_path / "px.pt", kind="anyorder", patch=2)),
    }
    argv = [paths.get(a, a) for a in argv] + ["--out", str(tmp_path / "out")]
    try:
        code = run_cli(main, argv)
    except SystemExit as err:  # argparse's own errors
        code = err.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--context", "--latent-channels", "--hyper-channels", "--out", "--framework"):
        assert option in text
    assert "default: 192" in text and "default: 2M" in text and "(default: compressai)" in text


def test_mixture_models_are_refused_not_exported_wrongly(tmp_path):
    """The exported module predicts Gaussians: a model of mixtures (K = 3) is refused, nothing written."""
    model = MultistageContext(o.paper_order(2), M, CH, mixture=3)
    ckpt = save(model, tmp_path / "mix.pt", **model.spec())
    with pytest.raises(UserError, match="only Gaussian context models are exported.*K = 3"):
        main(["--context", str(ckpt), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
