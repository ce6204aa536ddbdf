import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from orderopt import codec, coders, container, data, streams
from orderopt import orders as o
from orderopt.context import AnyOrderContext, AutoregressiveContext, MultistageContext
from orderopt.devices import cpu_kernels, torch_device
from orderopt.errors import UserError
from orderopt.fit import load_context, save_context
from orderopt.model import load_model, mixture_likelihood

from .conftest import DEVICES

M, CH = 12, 24


@pytest.fixture
def base(tiny_ckpt):
    return load_model(tiny_ckpt)


def saved(model, tmp_path, name, **meta):
    path = tmp_path / f"{name}.pt"
    save_context(model, path, {"latent_channels": M, "hyper_channels": CH, "model_hash": "t", **meta})
    return load_context(path)


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    smooth = np.cumsum(rng.normal(0, 6, (70, 90, 3)), axis=1)
    return data.to_tensor(np.clip(smooth - smooth.min(), 0, 255).astype(np.uint8))


def contexts(tmp_path):
    torch.manual_seed(0)
    out = [
        (
            "dedicated 2x2",
            saved(
                MultistageContext(o.paper_order(2), M, CH), tmp_path, "ms", kind="multistage", order="0,1;2,3"
            ),
            None,
        ),
        (
            "dedicated grouped 3x3",
            saved(
                MultistageContext(o.DecodingOrder("0,1,0;2,1,2;0,1,0"), M, CH),
                tmp_path,
                "ms3",
                kind="multistage",
                order="0,1,0;2,1,2;0,1,0",
            ),
            None,
        ),
        (
            "proxy checkerboard",
            saved(AnyOrderContext(2, M, CH), tmp_path, "px", kind="anyorder", patch=2),
            o.checkerboard(),
        ),
        (
            "proxy hyperprior-only",
            saved(AnyOrderContext(2, M, CH), tmp_path, "px", kind="anyorder", patch=2),
            o.hyperprior_only(),
        ),
        ("autoregressive", saved(AutoregressiveContext(M, CH), tmp_path, "ar", kind="autoregressive"), None),
    ]
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_round_trips_are_exact(tmp_path, base, image, device):
    model, meta = base
    device = torch_device(device, deterministic=True)  # as the command line does
    model.to(device)
    with torch.no_grad():
        expected = data.crop_to(
            model.synthesize(model.analyze(data.pad_to_multiple(image[None].to(device))[0]).y_hat),
            image.shape[1:],
        )[0].cpu()
    # (coder, substreams, expected substreams, precision of the context network)
    cases = [("rans", None, 1, "float32"), ("rans", 3, 3, "float32"), ("gaussian", None, 0, "float32")]
    cases.append(("mixture", None, 0, "float32"))  # it codes Gaussians too, as mixtures of one
    assert {c for c, *_ in cases} == set(coders.REGISTRY)  # every registered coder round-trips
    cases.append(("rans", None, 1, "bfloat16"))
    for name, (ctx, cmeta), order in contexts(tmp_path):
        ctx.to(device)
        for coder, substreams, parts, precision in cases:
            enc = streams.encode(image, model, meta["hash"], ctx, cmeta, order, coder, substreams, precision)
            dec = streams.decode(enc.stream, model, meta["hash"], ctx, cmeta)
            header, z_words, y_words = container.unpack(enc.stream)
            assert header["device"] == device.type and header["coder"]["name"] == coder
            assert header["precision"] == precision
            assert torch.equal(dec.y_hat, enc.y_hat), (name, coder)
            assert torch.equal(dec.image, expected), (name, coder)
            payload_bits = 32 * (len(z_words) + len(y_words))
            # within 1% of the likelihoods, plus a padding word per stream and rANS's substream
            # table (a count, then a length and a final 64-bit state per substream)
            assert payload_bits <= enc.estimated_bits * 1.01 + 64 + 32 * (1 + 3 * parts), (name, coder)
            if coder == "rans":
                assert y_words[0] == parts


def mixture_contexts(tmp_path):
    """Context models of mixtures of K = 3 Gaussians, one of each kind, saved and loaded."""
    torch.manual_seed(0)
    meta = {"latent_channels": M, "hyper_channels": CH, "model_hash": "t"}
    out = []
    for name, model, order in (
        ("multistage", MultistageContext(o.paper_order(2), M, CH, mixture=3), None),
        ("proxy", AnyOrderContext(2, M, CH, mixture=3), o.DecodingOrder.parse("0,2;1,3")),
        ("autoregressive", AutoregressiveContext(M, CH, mixture=3), None),
    ):
        path = tmp_path / f"mix-{name}.pt"
        save_context(model, path, {**meta, **model.spec()})
        out.append((name, load_context(path), order))
    return out


def test_mixture_round_trips_are_exact(tmp_path, base, image):
    """K = 3: coded with the mixture coder unless asked otherwise, decoded to the encoder's ŷ
    and image, the stream within 1% of the likelihoods; Gaussian-only coders refuse."""
    model, meta = base
    for name, (ctx, cmeta), order in mixture_contexts(tmp_path):
        assert ctx.mixture == 3 and cmeta["mixture"] == 3
        enc = streams.encode(image, model, meta["hash"], ctx, cmeta, order)
        header, z_words, y_words = container.unpack(enc.stream)
        assert header["coder"]["name"] == "mixture" and header["context"]["mixture"] == 3, name
        dec = streams.decode(enc.stream, model, meta["hash"], ctx, cmeta)
        assert torch.equal(dec.y_hat, enc.y_hat), name
        assert 32 * (len(z_words) + len(y_words)) <= enc.estimated_bits * 1.01 + 96, name
        for coder in ("rans", "gaussian"):
            with pytest.raises(UserError, match=f"coder {coder} codes Gaussian context models only.*K = 3"):
                streams.encode(image, model, meta["hash"], ctx, cmeta, order, coder)
    header, z_words, y_words = container.unpack(enc.stream)
    header["coder"]["probe"] = "0" * 16  # tables another machine's float64 arithmetic built
    with pytest.raises(UserError, match="mixture tables 0{16}.*decode it where it was encoded"):
        streams.decode(container.pack(header, z_words, y_words), model, meta["hash"], ctx, cmeta)
    ((ctx, cmeta),) = [c[1] for c in contexts(tmp_path)[:1]]  # Gaussians: no K in the header
    assert (
        "mixture"
        not in container.unpack(streams.encode(image, model, meta["hash"], ctx, cmeta).stream)[0]["context"]
    )


def test_mixture_tables_are_the_likelihoods_chunk_by_chunk(monkeypatch):
    """The coder's tables are mixture_likelihood over the symbol range, exactly the same in
    chunks as whole, every symbol codable."""
    rng = np.random.default_rng(0)
    n = 50
    params = (*rng.normal(0, 2, (3, n)), *rng.normal(0, 5, (3, n)), *np.exp(rng.normal(0, 1, (3, n))) + 0.11)
    whole = np.concatenate(list(coders.mixture_tables(params, (-30, 30))))
    monkeypatch.setattr(coders, "TABLE_ELEMENTS", 61 * 7)
    chunks = list(coders.mixture_tables(params, (-30, 30)))
    assert len(chunks) == 8 and np.array_equal(np.concatenate(chunks), whole)
    want = mixture_likelihood(
        torch.arange(-30, 31, dtype=torch.float64)[None], tuple(torch.from_numpy(v)[:, None] for v in params)
    )
    np.testing.assert_allclose(whole, want.numpy(), rtol=1e-9, atol=1e-15)
    assert whole.min() > 0
    np.testing.assert_allclose(whole.sum(1), 1, atol=1e-3)


def test_streams_of_older_versions_are_refused(tmp_path, base, image, monkeypatch):
    """Older streams were written with other arithmetic: refused, never decoded wrongly."""
    model, meta = base
    ((ctx, cmeta),) = [c[1] for c in contexts(tmp_path)[:1]]
    header, z_words, y_words = container.unpack(streams.encode(image, model, meta["hash"], ctx, cmeta).stream)
    monkeypatch.setattr(container, "VERSION", container.VERSION - 1)
    old = container.pack(header, z_words, y_words)
    monkeypatch.undo()
    with pytest.raises(UserError, match="older orderopt.*encode the image again"):
        streams.decode(old, model, meta["hash"], ctx, cmeta)


def test_rans_stream_that_ends_early(tmp_path, base, image):
    """Damage that keeps the checksum valid (a stream built wrongly) still fails cleanly."""
    model, meta = base
    ((ctx, cmeta),) = [c[1] for c in contexts(tmp_path)[:1]]
    header, z_words, y_words = container.unpack(streams.encode(image, model, meta["hash"], ctx, cmeta).stream)
    short = y_words.copy()
    short[1] -= 1
    with pytest.raises(UserError, match="stream is corrupt"):
        streams.decode(container.pack(header, z_words, short[:-1]), model, meta["hash"], ctx, cmeta)
    for coder, message in (
        ({"name": "rans", "grid": [1, 2, 3]}, "does not read"),
        ({**header["coder"], "tables": "0" * 16}, "tables"),  # another machine's rounding
    ):
        with pytest.raises(UserError, match=message):
            streams.decode(
                container.pack({**header, "coder": coder}, z_words, y_words), model, meta["hash"], ctx, cmeta
            )


def test_cli_round_trip_and_errors(tmp_path, tiny_ckpt, image, base):
    png = tmp_path / "in.png"
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(png)
    ctx = tmp_path / "px.pt"
    save_context(
        AnyOrderContext(2, M, CH),
        ctx,
        {"kind": "anyorder", "patch": 2, "latent_channels": M, "hyper_channels": CH, "model_hash": "t"},
    )
    stream, out = tmp_path / "new" / "s.oopt", tmp_path / "out.png"  # a folder made for the stream
    common = ["--model", str(tiny_ckpt), "--context", str(ctx)]
    assert codec.main(["encode", str(png), str(stream), "--order", "0,2;3,1", *common]) == 0
    assert codec.main(["decode", str(stream), str(out), *common]) == 0
    assert Image.open(out).size == (90, 70)
    assert sorted(p.name for p in stream.parent.iterdir()) == ["s.oopt"]  # no temporary left behind
    assert codec.main(["decode", str(stream), str(tmp_path / "noext"), *common]) == 0
    assert Image.open(tmp_path / "noext").format == "PNG"
    for bad_args, message in (
        (["--substreams", "0"], "between 1 and 256"),
        (["--coder", "gaussian", "--substreams", "2"], "rans only"),
    ):
        with pytest.raises(UserError, match=message):
            codec.main(["encode", str(png), str(stream), "--order", "0,1;2,3", *common, *bad_args])
    # a proxy of mixtures (K = 3) is coded with the mixture coder, chosen from the checkpoint
    mix = tmp_path / "mix.pt"
    model = AnyOrderContext(2, M, CH, mixture=3)
    save_context(model, mix, {**model.spec(), "latent_channels": M, "hyper_channels": CH, "model_hash": "t"})
    mixed = ["--model", str(tiny_ckpt), "--context", str(mix)]
    assert codec.main(["encode", str(png), str(tmp_path / "m.oopt"), "--order", "0,2;3,1", *mixed]) == 0
    assert container.unpack((tmp_path / "m.oopt").read_bytes())[0]["coder"]["name"] == "mixture"
    assert codec.main(["decode", str(tmp_path / "m.oopt"), str(tmp_path / "m.png"), *mixed]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "m.png")), np.asarray(Image.open(out)))
    for bad_args, message in (
        (["--coder", "rans"], "use --coder mixture"),
        (["--substreams", "2"], "rans only"),
    ):
        with pytest.raises(UserError, match=message):
            codec.main(["encode", str(png), str(stream), "--order", "0,1;2,3", *mixed, *bad_args])

    def fails(data_bytes, message):
        bad = tmp_path / "bad.oopt"
        bad.write_bytes(data_bytes)
        r = subprocess.run(
            [sys.executable, "-m", "orderopt.codec", "decode", str(bad), str(out), *common],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1, r.stderr

    good = stream.read_bytes()
    fails(good[:-4], "truncated")
    fails(good[:20], "truncated")
    fails(good + b"\0\0\0\0", "too long")
    flipped = bytearray(good)
    flipped[-3] ^= 0x40
    fails(bytes(flipped), "checksum")
    fails(b"JUNK" + good[4:], "not an orderopt stream")
    fails(b"", "not an orderopt stream")


def test_damaged_payload_with_a_valid_checksum(tmp_path, base, image):
    """A stream damaged before its checksum was computed: a clean error or an image, never a
    crash or a hang (rANS must end exactly in its initial state, which catches most damage)."""
    model, meta = base
    ((ctx, cmeta),) = [c[1] for c in contexts(tmp_path)[1:2]]
    header, z_words, y_words = container.unpack(streams.encode(image, model, meta["hash"], ctx, cmeta).stream)
    rng = np.random.default_rng(0)
    caught = 0
    for _ in range(12):
        bad = y_words.copy()
        at = rng.integers(2 + bad[0], len(bad))  # inside a substream, not its table
        bad[at] ^= np.uint32(1 << int(rng.integers(32)))
        try:
            streams.decode(container.pack(header, z_words, bad), model, meta["hash"], ctx, cmeta)
        except UserError as e:
            assert "corrupt" in str(e)
            caught += 1
    assert caught >= 10


def test_stream_from_another_model(tmp_path, base, image):
    model, meta = base
    ((ctx, cmeta),) = [c[1] for c in contexts(tmp_path)[:1]]
    enc = streams.encode(image, model, meta["hash"], ctx, cmeta)
    with pytest.raises(UserError, match="base model"):
        streams.decode(enc.stream, model, "0" * 16, ctx, cmeta)
    with pytest.raises(UserError, match="context model"):
        streams.decode(enc.stream, model, meta["hash"], ctx, {**cmeta, "hash": "x"})


def test_order_that_does_not_tile_the_proxy(tmp_path, base, image):
    model, meta = base
    ctx, cmeta = saved(AnyOrderContext(2, M, CH), tmp_path, "px", kind="anyorder", patch=2)
    with pytest.raises(UserError, match="does not tile"):
        streams.encode(image, model, meta["hash"], ctx, cmeta, o.raster(3))


def test_serial_autoregressive_decoder_matches_the_parallel_model(base, image):
    """The folded per-position computation gives the parameters of the model's forward pass."""
    model, _ = base
    torch.manual_seed(1)
    ar = AutoregressiveContext(M, CH).eval()
    with torch.no_grad():
        a = model.analyze(data.pad_to_multiple(image[None])[0])
        want_m, want_s = ar(a.y_hat, a.hyper)
        sched = ar.schedule(None, *a.y_hat.shape[2:])
        y = sched.new_latents(M, torch.device("cpu"))
        for t in range(sched.num_stages):
            means, scales = sched.params(y, a.hyper, t)
            i, j = divmod(t, a.y_hat.shape[3])
            assert torch.allclose(means[0], want_m[0, :, i, j], atol=1e-4)
            assert torch.allclose(scales[0], want_s[0, :, i, j], atol=1e-4)
            sched.put(y, t, sched.take(a.y_hat, t))
    assert torch.equal(y, a.y_hat)


def test_stream_from_another_device(tmp_path, base, image):
    """Float results differ between devices: such a stream is refused, not decoded wrongly."""
    model, meta = base
    ((ctx, cmeta),) = [c[1] for c in contexts(tmp_path)[:1]]
    header, z_words, y_words = container.unpack(streams.encode(image, model, meta["hash"], ctx, cmeta).stream)
    stream = container.pack({**header, "device": "cuda"}, z_words, y_words)
    with pytest.raises(UserError, match="--device cuda"):
        streams.decode(stream, model, meta["hash"], ctx, cmeta)


def test_stream_from_other_cpu_kernels(tmp_path, base, image):
    """AVX-512 kernels round differently from AVX2 ones (an AVX2 machine's stream failed to decode
    on an AVX-512 one as 'corrupt'): a stream from other kernels is refused by name; one from
    before the header recorded them decodes as it did; a crafted kernels field is refused."""
    model, meta = base
    ((ctx, cmeta),) = [c[1] for c in contexts(tmp_path)[:1]]
    enc = streams.encode(image, model, meta["hash"], ctx, cmeta)
    header, z_words, y_words = container.unpack(enc.stream)
    assert header["kernels"] == cpu_kernels()
    other = "aten=avx512"
    with pytest.raises(UserError, match=f"CPU kernels {other}, and this process runs"):
        streams.decode(
            container.pack({**header, "kernels": other}, z_words, y_words), model, meta["hash"], ctx, cmeta
        )
    older = container.pack({k: v for k, v in header.items() if k != "kernels"}, z_words, y_words)
    assert torch.equal(streams.decode(older, model, meta["hash"], ctx, cmeta).y_hat, enc.y_hat)
    for bad in ("aten=avx2\nerror: all is well", "path=/tmp", "", 3):
        with pytest.raises(UserError, match="header is invalid: CPU kernels"):
            container.unpack(container.pack({**header, "kernels": bad}, z_words, y_words))
    with pytest.raises(UserError, match="header is invalid: model hash"):
        container.unpack(container.pack({**header, "model": "x\ny"}, z_words, y_words))


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 kernel names")
def test_cli_decodes_with_the_streams_kernels(tmp_path):
    """End to end, with real kernels: a stream encoded with SSE4.1/baseline kernels (set in the
    environment, which the codec's pin respects) decodes in a plain environment, because the
    decoder adopts the stream's kernels; where the environment forces others it is refused in
    one line (exit 2), naming both."""
    Image.fromarray((np.random.default_rng(2).uniform(0, 1, (64, 64, 3)) * 255).astype(np.uint8)).save(
        tmp_path / "in.png"
    )
    plain = {
        k: v
        for k, v in os.environ.items()
        if k not in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_CBWR")
    }
    sse = {**plain, "ONEDNN_MAX_CPU_ISA": "SSE41", "ATEN_CPU_CAPABILITY": "default"}

    def run(env, *args):
        cmd = [sys.executable, "-m", "orderopt.codec", *args, "--quality", "1"]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)

    assert run(sse, "encode", "in.png", "s.oopt", "--order", "0,1;2,3").returncode == 0
    kernels = container.unpack((tmp_path / "s.oopt").read_bytes())[0]["kernels"]
    assert kernels == "aten=default onednn=SSE41 mkl=AVX2"
    assert run(plain, "decode", "s.oopt", "out.png").returncode == 0
    r = run({**plain, "ONEDNN_MAX_CPU_ISA": "AVX2"}, "decode", "s.oopt", "out.png")
    assert r.returncode == 2 and f"CPU kernels {kernels}, and this process runs" in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1, r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where no GPU is present")
def test_cli_cuda_without_gpu(tmp_path, tiny_ckpt):
    r = subprocess.run(
        [sys.executable, "-m", "orderopt.codec", "decode", "x.oopt", "y.png", "--device", "cuda"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert r.returncode == 2 and "no CUDA GPU" in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_shipped_quality_round_trip_and_decode_by_hash(tmp_path):
    """A stream coded with a shipped quality decodes with no options: the decoder finds the
    quality by the stream's model hash; --model and --quality together are refused."""
    arr = (np.random.default_rng(0).uniform(0, 1, (64, 96, 3)) * 255).astype(np.uint8)
    png, stream, out = tmp_path / "in.png", tmp_path / "s.oopt", tmp_path / "out.png"
    Image.fromarray(arr).save(png)
    assert codec.main(["encode", str(png), str(stream), "--order", "0,1;2,3", "--quality", "1"]) == 0
    assert codec.main(["decode", str(stream), str(out)]) == 0
    assert Image.open(out).size == (96, 64)
    with pytest.raises(UserError, match="not both"):
        codec.main(["decode", str(stream), str(out), "--model", "m.pt", "--quality", "1"])
    with pytest.raises(UserError, match="was encoded with base model"):
        codec.main(["decode", str(stream), str(out), "--quality", "3"])


def test_shipped_mixture_proxy_round_trip(tmp_path):
    """codec encode --mixture 3 codes with quality 2's shipped K = 3 proxy and the mixture
    coder; the decoder finds the model, the proxy and the coder from the stream alone and
    reconstructs the same image as from the Gaussian proxy's stream."""
    from orderopt.container import unpack

    arr = (np.random.default_rng(1).uniform(0, 1, (64, 64, 3)) * 255).astype(np.uint8)
    png, stream = tmp_path / "in.png", tmp_path / "s.oopt"
    Image.fromarray(arr).save(png)
    args = ["encode", str(png), str(stream), "--order", "0,2;1,3", "--mixture", "3", "--quality", "2"]
    assert codec.main(args) == 0
    header, _, _ = unpack(stream.read_bytes())
    assert header["coder"]["name"] == "mixture" and header["context"]["mixture"] == 3
    assert codec.main(["decode", str(stream), str(tmp_path / "mix.png")]) == 0
    # every context model codes the same ŷ = round(y): the Gaussian proxy's stream decodes alike
    gauss = tmp_path / "g.oopt"
    assert codec.main(["encode", str(png), str(gauss), "--order", "0,2;1,3", "--quality", "2"]) == 0
    assert codec.main(["decode", str(gauss), str(tmp_path / "gauss.png")]) == 0
    decoded = [np.asarray(Image.open(tmp_path / f"{n}.png")) for n in ("mix", "gauss")]
    assert decoded[0].shape == (64, 64, 3) and np.array_equal(*decoded)
    with pytest.raises(UserError, match="proxy_k2_mix3"):
        codec.main([*args[:-1], "1"])  # quality 1 ships no mixture proxy


def test_a_stream_decodes_with_any_thread_count_of_the_decoder():
    """The context network's float results depend on how many threads split its matrix
    products (encoded with 2 threads and decoded with 1, a stream of the shipped proxy was
    'corrupt'): the stream records the encoder's count and the decoder runs with it."""
    from orderopt.container import unpack
    from orderopt.fit import load_context
    from orderopt.model import load_model, shipped_weights

    base, meta = load_model(None, 2)
    ctx, cmeta = load_context(shipped_weights("proxy_k2", 2))
    img = torch.rand(3, 128, 192, generator=torch.Generator().manual_seed(0))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        enc = streams.encode(img, base, meta["hash"], ctx, cmeta, o.paper_order(2))
        assert unpack(enc.stream)[0]["threads"] == 2
        torch.set_num_threads(1)
        assert torch.equal(streams.decode(enc.stream, base, meta["hash"], ctx, cmeta).y_hat, enc.y_hat)
        assert torch.get_num_threads() == 1  # the caller's setting is back
    finally:
        torch.set_num_threads(before)
